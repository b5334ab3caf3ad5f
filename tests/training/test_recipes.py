"""The small-data recipes on the one backbone: mixup/cutmix, EMA of the weights, layer-wise lr decay."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from popevit.config import load_config
from popevit.models import create_model
from popevit.training import train
from popevit.training.callbacks import warm_ema_multi_avg_fn
from popevit.training.module import ClassifierModule
from popevit.training.optim import build_optimizer

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
TINY = ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.batch_size=8", "optim.warmup_epochs=1",
        "train.progress_bar=false", "train.threads=1", "train.patience=null"]  # fmt: skip
KW = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "rope_axial"}


def _module(mix=None, weights=(1.0, 2.0, 3.0, 4.0), smoothing=0.0):
    optim = {"lr": 1e-3, "label_smoothing": smoothing}
    return ClassifierModule("vit_p8_w32_d2", KW, CLASSES, optim, list(weights), mix=mix)


def test_soft_target_loss_equals_the_weighted_hard_loss_for_one_hot_targets():
    m = _module()
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 1])
    hard = F.cross_entropy(logits, y, weight=m.class_weights)
    assert torch.allclose(m._loss(logits, F.one_hot(y, 4).float()), hard, atol=1e-6)
    # and a 50/50 mix is the class-weight-normalised mean of the two hard losses' numerators
    y2 = torch.tensor([1, 0, 3, 2, 0, 2])
    soft = (F.one_hot(y, 4).float() + F.one_hot(y2, 4).float()) / 2
    w = m.class_weights
    num = w[y] * F.cross_entropy(logits, y, reduction="none") + w[y2] * F.cross_entropy(logits, y2, reduction="none")
    assert torch.allclose(m._loss(logits, soft), num.sum() / (w[y] + w[y2]).sum(), atol=1e-6)


def test_soft_target_loss_with_label_smoothing_equals_torchs_smoothed_weighted_loss():
    m = _module(smoothing=0.1)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 1])
    hard = F.cross_entropy(logits, y, weight=m.class_weights, label_smoothing=0.1)
    smoothed = F.one_hot(y, 4).float() * 0.9 + 0.1 / 4  # what timm's Mixup gives for an unmixed batch
    assert torch.allclose(m._loss(logits, smoothed), hard, atol=1e-6)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_makes_convex_images_and_targets_and_keeps_an_odd_last_image(kind):
    aug = {"mixup": 0.8 if kind == "mixup" else 0.0, "cutmix": 1.0 if kind == "cutmix" else 0.0}
    m = _module(mix=aug, smoothing=0.1)
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 2])
    x0 = x.clone()
    xm, t = m.mix(x, y)
    assert xm.shape == x.shape and t.shape == (5, 4)
    assert torch.allclose(t.sum(-1), torch.ones(5))
    # pairs are (0, 3) and (1, 2): timm mixes the batch with its reversal, one lam per batch
    flipped = x[:4].flip(0)
    if kind == "mixup":
        lam = (t[0, 0].item() - 0.1 / 4) / 0.9  # target of image 0 = smooth(lam * e_0 + (1 - lam) * e_3)
        assert 0 < lam < 1
        assert torch.allclose(xm[:4], lam * x[:4] + (1 - lam) * flipped, atol=1e-5)
    else:
        assert ((xm[:4] == x[:4]) | (xm[:4] == flipped)).all()  # every pixel comes from the image or its partner
        lam = (xm[0] == x[0]).float().mean().item()  # the kept area
        assert 0 < lam < 1
        assert t[0, 0].item() == pytest.approx(0.9 * lam + 0.1 / 4, abs=1e-5)
    assert t[0, 3].item() == pytest.approx(0.9 * (1 - lam) + 0.1 / 4, abs=1e-5)
    # the unpaired last image is untouched and keeps its smoothed hard label
    assert torch.equal(xm[4], x[4])
    assert torch.allclose(t[4], F.one_hot(y[4], 4).float() * 0.9 + 0.1 / 4)
    assert torch.equal(x, x0)  # the input batch itself is not modified (timm mixes in place)


def test_mixup_run_trains_end_to_end(phantom_root, tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "train.max_epochs=1",
            f"data.data={phantom_root}",
            "data.augment.mixup=0.8",
            "data.augment.cutmix=1.0",
            "optim.label_smoothing=0.1",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert 0.0 <= result.val_metrics["val/auroc_macro"] <= 1.0


def test_warm_ema_follows_the_num_updates_rule():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    w0 = net.weight.detach().clone()
    warm = AveragedModel(net, multi_avg_fn=partial(warm_ema_multi_avg_fn, decay=0.99))
    fixed = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    expected = w0.clone()
    for n in range(60):  # update n averages n + 1 models; the first one is a copy
        if n:
            with torch.no_grad():
                net.weight.add_(torch.randn_like(net.weight))
            d = min(0.99, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * net.weight.detach()
        warm.update_parameters(net)
        fixed.update_parameters(net)
    assert torch.allclose(warm.module.weight, expected, atol=1e-5)
    assert not torch.allclose(fixed.module.weight, expected, atol=1e-2)


def test_warm_ema_forgets_the_initialisation_that_a_fixed_decay_keeps():
    net = torch.nn.Linear(3, 2)
    w1 = net.weight.detach() + 1.0
    warm = AveragedModel(net, multi_avg_fn=partial(warm_ema_multi_avg_fn, decay=0.99))
    fixed = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    warm.update_parameters(net)
    fixed.update_parameters(net)
    with torch.no_grad():
        net.weight.copy_(w1)  # the weights move once, by 1, and stay
    for _ in range(59):
        warm.update_parameters(net)
        fixed.update_parameters(net)
    kept = lambda m: (w1 - m.module.weight.detach()).mean().item()  # noqa: E731  share of the initial weights left
    assert kept(fixed) == pytest.approx(0.99**59, rel=1e-4)  # 55% after 60 updates
    assert abs(kept(warm)) < 1e-5  # prod_n (1 + n) / (10 + n) over n = 1..59 is ~3e-10


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_run_validates_checkpoints_and_exports_the_averaged_weights(phantom_root, tmp_path, warmup):
    ema = ["train.ema_decay=0.9", f"train.ema_warmup={str(warmup).lower()}"]
    cfg = load_config(None, [*TINY, "train.max_epochs=2", f"data.data={phantom_root}", *ema])
    result = train(cfg, tmp_path / "run")
    ckpt = torch.load(result.out_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt  # Lightning's EMA keeps the raw weights beside the averaged ones
    exported = load_file(str(result.out_dir / "model.safetensors"))
    averaged = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    raw = {k[len("model.") :]: v for k, v in ckpt["current_model_state"].items() if k.startswith("model.")}
    assert set(exported) == set(averaged)
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)  # the average is not the raw model


def test_layer_decay_scales_lr_by_depth_and_keeps_no_weight_decay():
    model = create_model("vit_p8_w32_d2", **{**KW, "pos_enc": "pope"})
    depth = len(model.blocks)
    cfg = load_config(None, ["optim.lr=1e-3", "optim.layer_decay=0.5", "optim.weight_decay=0.05"]).optim
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)  # every trainable parameter in exactly one group
    lr = lambda n: lr_of[id(names[n])][0]  # noqa: E731
    assert lr("head.weight") == pytest.approx(1e-3)
    assert lr("norm.weight") == pytest.approx(1e-3 * 0.5)  # timm groups the final norm with the last block
    for i in range(depth):
        assert lr(f"blocks.{i}.attn.qkv.weight") == pytest.approx(1e-3 * 0.5 ** (depth - i))
    for stem in ("patch_embed.weight", "pos_enc.delta"):
        assert lr(stem) == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    for n in model.no_weight_decay() | {"blocks.0.norm1.weight"}:
        assert lr_of[id(names[n])][1] == 0.0
    assert lr_of[id(names["blocks.0.attn.qkv.weight"])][1] == 0.05


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_takes_a_step_with_and_without_momentum(momentum):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, load_config(None, ["optim.name=sgd", f"optim.momentum={momentum}"]).optim)
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before) and opt.param_groups[0]["nesterov"] == (momentum > 0)


def test_layer_decay_on_a_model_without_layers_is_a_clear_error():
    cfg = load_config(None, ["optim.layer_decay=0.7"]).optim
    with pytest.raises(ValueError, match="group_matcher"):
        build_optimizer(torch.nn.Linear(3, 2), cfg)


def test_a_wall_clock_cap_stops_training_and_still_exports_a_model(phantom_root, tmp_path):
    cfg = load_config(None, [*TINY, "train.max_epochs=50", f"data.data={phantom_root}", "train.max_minutes=0.002"])
    result = train(cfg, tmp_path / "run")
    assert result.epochs < 50  # stopped by the 0.12 s cap, not by max_epochs
    assert (result.out_dir / "model.safetensors").is_file() and "val/auroc_macro" in result.val_metrics
    info = json.loads((result.out_dir / "run.json").read_text())
    n_train = (result.out_dir / "manifest.csv").read_text().count(",train,")
    assert info["hit_time_cap"] is True and 0 < info["images_seen"] <= (result.epochs + 1) * n_train < 50 * n_train


def test_a_time_clocked_schedule_has_decayed_when_the_cap_stops_the_run(phantom_root, tmp_path):
    """1000 planned epochs, a 3-second budget: with the steps clock the lr would still be at its peak when the cap
    stops the run; with the time clock it has decayed to ~0 by then, which run.json's final_lr records."""
    over = [*TINY, "train.max_epochs=1000", f"data.data={phantom_root}", "train.max_minutes=0.05"]
    result = train(load_config(None, [*over, "optim.schedule_clock=time", "optim.lr=1e-3"]), tmp_path / "run")
    info = json.loads((result.out_dir / "run.json").read_text())
    assert info["hit_time_cap"] is True and result.epochs < 500
    assert 0 <= info["final_lr"] < 0.05 * 1e-3, info["final_lr"]
