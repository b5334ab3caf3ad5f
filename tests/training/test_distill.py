"""DeiT's distillation token: the token and head in every PE's ViT, the two losses, and a run with a teacher."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from popevit.artifact import ModelMeta, load_artifact, save_artifact
from popevit.config import PreprocessConfig, load_config
from popevit.models import create_model, list_pos_encs
from popevit.training import train
from popevit.training.module import ClassifierModule, check_teacher_preprocess

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
TINY = ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.batch_size=8", "optim.warmup_epochs=1",
        "train.progress_bar=false", "train.threads=1", "train.patience=null"]  # fmt: skip


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pe", list_pos_encs())
def test_distillation_token_in_every_pe(pe, pool):
    torch.manual_seed(0)
    m = create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pos_enc=pe, pool=pool, distill=True)
    assert m.num_prefix_tokens == (2 if pool == "cls" else 1) and "dist_token" in m.no_weight_decay()
    x = torch.randn(3, 1, 32, 32)
    cls_logits, dist_logits = m.train()(x)
    assert cls_logits.shape == dist_logits.shape == (3, 4) and not torch.allclose(cls_logits, dist_logits)
    (cls_logits.sum() + 2 * dist_logits.sum()).backward()
    assert m.dist_token.grad.abs().sum() > 0 and m.head_dist.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        expected = (m.forward_head(feats) + m.head_dist(feats[:, m.num_prefix_tokens - 1])) / 2
        torch.testing.assert_close(m(x), expected)  # eval: the mean of the two heads (DeiT inference)


def test_distillation_only_for_popevit_vits():
    with pytest.raises(ValueError, match="distill=True needs a popevit ViT preset"):
        create_model("resnet18", num_classes=4, img_size=32, distill=True)


def _teacher_run(path, img_size=32, classes=CLASSES):
    torch.manual_seed(123)
    kw = {"num_classes": len(classes), "in_chans": 1, "img_size": img_size, "pos_enc": "none"}
    meta = ModelMeta("vit_p8_w32_d2", kw, classes, PreprocessConfig(img_size=img_size))
    save_artifact(create_model("vit_p8_w32_d2", **kw), meta, path)
    return path


def _module(teacher, mode="hard", tau=1.0):
    kw = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "pope", "distill": True}
    return ClassifierModule(
        "vit_p8_w32_d2", kw, CLASSES, {"lr": 1e-3}, None, 0, {"teacher": str(teacher), "mode": mode, "tau": tau}
    )


def test_hard_and_soft_distillation_losses(tmp_path):
    teacher = _teacher_run(tmp_path / "teacher")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    hard = _module(teacher, "hard")
    torch.testing.assert_close(hard.distill_loss(s, t), F.cross_entropy(s, t.argmax(-1)))
    soft = _module(teacher, "soft", tau=2.0)
    p_t = (t / 2).softmax(-1)
    manual = (p_t * (p_t.log() - (s / 2).log_softmax(-1))).sum(-1).mean() * 4
    torch.testing.assert_close(soft.distill_loss(s, t), manual)
    assert soft.distill_loss(t, t).abs() < 1e-6
    # the teacher is frozen and not part of the student's state dict or parameters
    assert not any(k.startswith("_teacher") or "teacher" in k for k in hard.state_dict())
    assert all(not p.requires_grad for p in hard._teacher[0].parameters())
    assert sum(p.numel() for p in hard.parameters()) == sum(p.numel() for p in hard.model.parameters())


def test_teacher_must_match_the_student(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished run folder"):
        _module(tmp_path / "nothing")
    with pytest.raises(ValueError, match="img_size=48 but the student uses img_size=32"):
        _module(_teacher_run(tmp_path / "t48", img_size=48))
    with pytest.raises(ValueError, match="train the teacher on the same task"):
        _module(_teacher_run(tmp_path / "t2", classes=["notumor", "tumor"]))


def test_a_teacher_preprocessed_differently_is_refused_before_the_run_folder(tmp_path):
    teacher = _teacher_run(tmp_path / "teacher")
    check_teacher_preprocess(teacher, PreprocessConfig(img_size=32))  # the same settings pass
    student = [*TINY, "data.preprocess.crop_foreground=false", f"model.distill.teacher={teacher}"]
    cfg = load_config(None, [*student, f"data.data={tmp_path}"])
    with pytest.raises(ValueError, match=r"crop_foreground=True but the student uses crop_foreground=False"):
        train(cfg, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_distilled_run_trains_and_saves_a_student_that_averages_its_heads(phantom_root, tmp_path):
    teacher = _teacher_run(tmp_path / "teacher")
    # the teacher was itself fine-tuned from pretrained weights: both stages count in the student's budget
    pre = {"role": "init", "path": "runs/mim", "record": "pretrain.json", "wall_s": 40.0, "epochs": 3}
    (teacher / "run.json").write_text(json.dumps({"wall_s": 30.5, "epochs": 2, "images_seen": 64, "upstream": [pre]}))
    cfg = load_config(
        None,
        [
            *TINY,
            "train.max_epochs=1",
            f"data.data={phantom_root}",
            f"model.distill.teacher={teacher}",
            "model.distill.mode=soft",
            "model.distill.tau=2",
        ],
    )
    result = train(cfg, tmp_path / "run")
    model, meta = load_artifact(result.out_dir)
    assert meta.kwargs["distill"] is True and model.head_dist is not None
    info = json.loads((result.out_dir / "run.json").read_text())
    assert info["upstream"] == [
        {"role": "teacher", "path": str(teacher), "record": "run.json", "wall_s": 30.5, "epochs": 2, "images_seen": 64}
        | {"device": None},
        pre,
    ]
    assert info["budget_wall_s"] == pytest.approx(info["wall_s"] + 70.5, abs=0.02)
    ckpt = torch.load(next((result.out_dir / "checkpoints").glob("last*.ckpt")), weights_only=False)
    assert not any("teacher" in k for k in ckpt["state_dict"])
    out = model.eval()(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
