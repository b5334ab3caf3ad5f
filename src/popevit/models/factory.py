"""``create_model``: every registered model (popevit ViT presets, pretrained/CNN baselines) behind one name space.

The names come from :data:`popevit.models.spec.MODELS`, filled by ``presets.py`` and ``baselines.py`` (imported
here for that); pretrained weights are read or downloaded by :mod:`popevit.models.weights` (see its docstring for
what ``pretrained=`` takes).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from popevit.models import baselines, presets  # noqa: F401  (registers the models)
from popevit.models.presets import PRESETS
from popevit.models.spec import MODELS, reject_options
from popevit.models.weights import load_state, read_source


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def is_vit(name: str) -> bool:
    """True for popevit ViT presets, the models that take a ``pos_enc``; unknown names raise."""
    return MODELS.get(name).is_vit


def _check_options(
    name: str, *, num_classes: int, in_chans: int, stem: str | None, distill: bool, arch: dict[str, int]
) -> None:
    """Raise ``ValueError`` for options that model ``name`` cannot honour (see :func:`create_model`)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if stem is not None and not MODELS.get(name).is_vit:
        raise ValueError(f"model {name!r} has its own tokeniser; stem={stem!r} applies to popevit ViT presets only")
    if not MODELS.get(name).is_vit:
        reject_options(name, **arch)
    if distill and name not in PRESETS:
        raise ValueError(
            f"distill=True needs a popevit ViT preset ({', '.join(PRESETS)}), got {name!r}; "
            "use one of them as the student, or drop model.distill"
        )


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 1,
    img_size: int = 224,
    pos_enc: str | None = None,
    patch_size: int | None = None,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    pool: str | None = None,
    pretrained: str | Path | None = None,
    freeze_backbone: bool = False,
    stem: str | None = None,
    distill: bool = False,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    fc_norm: bool = False,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model (``list_models()``); unknown names raise with a did-you-mean hint.
        num_classes: logits of the classifier.
        in_chans: input channels, 1 (grayscale) or 3.
        img_size: reference input side; any multiple of the patch size runs at inference.
        pos_enc: positional encoding for ViT presets (``None`` = the preset default, ``pope``); baselines accept
            only ``None`` or their own built-in encoding.
        patch_size: override the preset's patch size (baselines: ``None`` or 16).
        dropout: dropout in MLPs and before the head.
        attn_dropout: dropout on attention probabilities.
        drop_path: maximum stochastic-depth rate.
        pool: ``"cls"`` or ``"mean"``; ``None`` = the model's default.
        pretrained: ``None``, a local weight file, or ``"hub"`` (see the module docstring).
        freeze_backbone: train the classifier only (every other parameter gets ``requires_grad=False``).
        stem: ViT tokeniser, ``"patch"`` (one patchify convolution), ``"conv"`` (convolutional stem, Xiao et al.
            2021) or ``"res"`` (residual convolutional stem); ``None`` = the preset's. Baselines accept only ``None``.
        distill: add DeiT's distillation token and head (popevit ViT presets only); the model then returns
            ``(class_logits, distillation_logits)`` in training mode and their mean in eval mode.
        embed_dim, depth, num_heads, mlp_dim: override the preset's token width, number of blocks, attention heads
            and MLP hidden width (popevit ViT presets only; ``None`` = the preset's). A changed ``embed_dim``
            without ``num_heads`` keeps the preset's head width when it divides the new width.
        fc_norm: normalise the pooled feature instead of every token (popevit ViT presets only; see
            :class:`popevit.models.vit.ViTConfig`).

    Returns:
        The model, mapping ``(B, in_chans, H, W)`` float images to ``(B, num_classes)`` logits, with a
        ``no_weight_decay() -> set[str]`` method.
    """
    name = MODELS.canonical(name)  # a preset's former name (recorded in older artefacts) builds the same model
    spec = MODELS.get(name)
    state = None if pretrained is None else read_source(name, pretrained)  # fail before the (slow) build
    arch = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
    arch = {k: v for k, v in arch.items() if v is not None} | ({"fc_norm": True} if fc_norm else {})
    _check_options(name, num_classes=num_classes, in_chans=in_chans, stem=stem, distill=distill, arch=arch)
    model = spec.build(
        **({"stem": stem} if stem is not None else {}),
        **({"distill": True} if distill else {}),
        **arch,
        name=name,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        pos_enc=pos_enc,
        patch_size=patch_size,
        dropout=dropout,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
        pool=pool,
    )
    if state is not None:
        load_state(model, name, state, source=str(pretrained))
    if freeze_backbone:
        for pname, p in model.named_parameters():
            p.requires_grad_(pname.startswith(spec.head + "."))
    return model


POS_ENC_MARKERS = ("pos_enc.", "pos_embed", "pos_embedding")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(total, positional)`` parameter counts; positional = names containing ``pos_enc.``/``pos_embed(ding)``."""
    total = pe = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if any(m in name for m in POS_ENC_MARKERS):
            pe += p.numel()
    return total, pe
