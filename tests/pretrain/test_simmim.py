"""SimMIM pretraining: masks, patch order, loss on hidden patches only, every PE, and pretrain -> train --init."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from popevit.config import load_config
from popevit.models import create_model, list_pos_encs
from popevit.pretrain import SimMIM, patchify, random_mask
from popevit.pretrain.run import pretrain
from popevit.training import train

TINY = ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.batch_size=8", "optim.warmup_epochs=0",
        "train.progress_bar=false", "train.threads=1", "train.patience=null"]  # fmt: skip


def _vit(pe="pope", **kw):
    return create_model("vit_p8_w32_d2", num_classes=4, in_chans=1, img_size=32, pos_enc=pe, **kw)


def test_random_mask_hides_exactly_the_ratio_per_image_and_is_reproducible():
    m = random_mask(64, 16, 0.6, torch.Generator().manual_seed(3))
    assert m.dtype == torch.bool and (m.sum(1) == 10).all()  # round(0.6 * 16)
    assert len({tuple(r.tolist()) for r in m}) > 50  # different images, different masks
    assert torch.equal(m, random_mask(64, 16, 0.6, torch.Generator().manual_seed(3)))
    assert (random_mask(4, 16, 0.01).sum(1) == 1).all()  # never an empty mask


def test_patchify_follows_the_patch_embedding_token_order():
    model = _vit()
    with torch.no_grad():  # patch embedding that sums each patch's pixels into channel 0
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
        model.patch_embed.weight[0].fill_(1.0)
    x = torch.randn(2, 1, 32, 32)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, C)
    assert torch.allclose(tokens[..., 0], patchify(x, model.patch_size).sum(-1), atol=1e-5)


@pytest.mark.parametrize(
    ("pe", "stem"), [*((pe, "patch") for pe in list_pos_encs()), ("pope", "conv"), ("pope", "res")]
)
def test_hidden_patches_do_not_reach_the_encoder_and_only_they_are_scored(pe, stem):
    torch.manual_seed(0)
    net = SimMIM(_vit(pe, pool="cls", stem=stem)).eval()  # eval: the conv stem's BatchNorm uses running stats
    p, grid = net.encoder.patch_size, 32 // net.encoder.patch_size
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    mask = random_mask(2, grid * grid, 0.5, torch.Generator().manual_seed(1))
    loss = net(x, mask)
    # the gradient reaches the input only through the target (hidden patches) and the encoder (visible ones) ...
    (gx,) = torch.autograd.grad(net.reconstruct(x, mask).square().sum(), x)
    hidden = mask.view(2, grid, 1, grid, 1).expand(2, grid, p, grid, p).reshape(2, 1, 32, 32)
    assert gx[hidden].abs().max() == 0 and gx[~hidden].abs().max() > 0  # ... so the encoder never sees hidden pixels
    # the loss is the mean L1 over hidden patches only
    pred = net.reconstruct(x, mask)
    err = (pred - patchify(x, p)).abs().mean(-1)
    assert torch.allclose(loss, err[mask].mean(), atol=1e-6)
    loss.backward()
    trained = [(n, q) for n, q in net.named_parameters() if q.requires_grad]
    assert {n for n, q in net.named_parameters() if not q.requires_grad} == {"encoder.head.weight", "encoder.head.bias"}
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for _, q in trained), [
        n for n, q in trained if q.grad is None
    ]


def test_simmim_only_wraps_popevit_vits():
    with pytest.raises(TypeError, match="vit_"):
        SimMIM(torch.nn.Linear(2, 2))


def test_pretrain_refuses_fine_tuning_options_it_would_ignore(phantom_root, tmp_path):
    cfg = load_config(None, [*TINY, f"data.data={phantom_root}", "data.augment.mixup=0.8", "train.ema_decay=0.99"])
    with pytest.raises(ValueError, match=r"data.augment.mixup/cutmix, train.ema_decay: fine-tuning options"):
        pretrain(cfg, tmp_path / "mim")
    assert not (tmp_path / "mim").exists()  # refused before the run folder is made
    with pytest.raises(ValueError, match=r"ViT presets .* got model.name='resnet18'"):
        pretrain(load_config(None, [*TINY, f"data.data={phantom_root}", "model.name=resnet18"]), tmp_path / "mim")
    assert not (tmp_path / "mim").exists()


def test_pretrain_learns_and_its_encoder_initialises_every_backbone_weight_of_train(phantom_root, tmp_path):
    cfg = load_config(None, [*TINY, "train.max_epochs=40", "optim.lr=2e-3", f"data.data={phantom_root}"])
    result = pretrain(cfg, tmp_path / "mim")
    info = json.loads((tmp_path / "mim" / "pretrain.json").read_text())
    assert info["epochs"] == 40 and info["mask_ratio"] == 0.6
    assert info["steps"] == 40 * -(-info["train_images"] // 8) and info["images_seen"] == 40 * info["train_images"]
    with open(tmp_path / "mim" / "logs" / "csv" / "metrics.csv") as f:
        val = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert min(val) < 0.92 * val[0]  # the reconstruction of held-out images improves (0.84x at 50 epochs)
    enc = load_file(str(result.encoder))
    assert not any(k.startswith("head") for k in enc) and "pos_enc.delta" in enc and "mask_token" not in enc
    ft = load_config(None, [*TINY, "train.max_epochs=1", "train.limit_train_batches=1", f"data.data={phantom_root}"])
    run = train(ft, tmp_path / "ft", init=result.encoder)
    from popevit.artifact import load_artifact

    model, _ = load_artifact(run.out_dir)
    assert set(enc) == {k for k in model.state_dict() if not k.startswith("head")}
    # one fine-tuning step moved the weights only a little from the pretrained ones (they were loaded)
    w = model.state_dict()["blocks.0.attn.qkv.weight"]
    assert (w - enc["blocks.0.attn.qkv.weight"]).abs().max() < 0.1 * enc["blocks.0.attn.qkv.weight"].abs().max()
    # the fine-tune states its whole budget: the pretraining's compute beside its own
    ft_info = json.loads((run.out_dir / "run.json").read_text())
    assert ft_info["upstream"] == [
        {"role": "init", "path": str(tmp_path / "mim"), "record": "pretrain.json"}
        | {k: info[k] for k in ("wall_s", "epochs", "images_seen", "device")}
    ]
    assert ft_info["budget_wall_s"] == pytest.approx(ft_info["wall_s"] + info["wall_s"], abs=0.02)
