"""The model registry and ``create_model``: popevit ViT presets and pretrained/CNN baselines behind one name space.

Each registered :class:`ModelSpec` knows how to build its module from the common options, where its input stem and
classifier live (to adapt pretrained weights), and where to download weights when the caller asks for the hub.

Pretrained weights (``pretrained=``):

- ``None``: random initialisation.
- a path to a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (the latter read with
  ``torch.load(weights_only=True)``, so no pickle code runs). The classifier is replaced when its shape differs
  (another number of classes), a 1-channel model gets the RGB stem filters summed (timm's ``adapt_input_conv``),
  absolute position tables are resampled to the model's grid, and everything else is loaded strictly: missing or
  unexpected keys raise, naming them.
- the string ``"hub"``: timm's or torchvision's own download of the ImageNet weights. Offline (no route to the
  host within a few seconds, or ``HF_HUB_OFFLINE=1`` / ``POPEVIT_OFFLINE=1``) it fails fast with a message that says
  how to pass a local file instead.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from popevit.registry import Registry

log = logging.getLogger(__name__)

HUB = "hub"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """How to build and load one registered model.

    Attributes:
        build: ``build(**options) -> nn.Module``; raises ``ValueError`` for options it cannot honour.
        is_vit: the model takes a ``pos_enc`` (a popevit ViT preset).
        head: module prefix of the classifier (replaced for the task; the only trainable part when frozen).
        stem: state-dict key of the input convolution weight (adapted to 1 channel).
        hub: returns the library's pretrained state dict (downloads); ``None`` when there is none.
        hub_host: the host ``hub`` downloads from, probed before downloading.
        adapt_state: ``adapt_state(model, state) -> state``, e.g. resampling position tables.
        fresh: ``fresh(key) -> bool`` for parameters expected to be absent from a checkpoint (new modules).
        description: one line for ``popevit models``.
    """

    build: Callable[..., nn.Module]
    is_vit: bool
    head: str
    stem: str
    hub: Callable[[], dict[str, torch.Tensor]] | None = None
    hub_host: str | None = None
    adapt_state: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    fresh: Callable[[str], bool] = field(default=lambda key: False)
    description: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, spec: ModelSpec) -> None:
    """Add ``spec`` under ``name``; duplicates raise."""
    MODELS.add(name, spec)


def _ensure_registered() -> None:
    from popevit.models import baselines, presets  # noqa: F401  (registration side effects)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_registered()
    return MODELS.names()


def is_vit(name: str) -> bool:
    """True for popevit ViT presets, the models that take a ``pos_enc``; unknown names raise."""
    _ensure_registered()
    return MODELS.get(name).is_vit


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

    Returns:
        The model, mapping ``(B, in_chans, H, W)`` float images to ``(B, num_classes)`` logits, with a
        ``no_weight_decay() -> set[str]`` method.
    """
    _ensure_registered()
    name = MODELS.canonical(name)  # a preset's former name (recorded in older artefacts) builds the same model
    spec = MODELS.get(name)
    state = None if pretrained is None else read_source(name, pretrained)  # fail before the (slow) build
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if stem is not None and not spec.is_vit:
        raise ValueError(f"model {name!r} has its own tokeniser; stem={stem!r} applies to popevit ViT presets only")
    arch = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
    arch = {k: v for k, v in arch.items() if v is not None}
    if not spec.is_vit:
        reject_options(name, **arch)
    if distill:
        from popevit.models.presets import PRESETS

        if name not in PRESETS:
            raise ValueError(
                f"distill=True needs a popevit ViT preset ({', '.join(PRESETS)}), got {name!r}; "
                "use one of them as the student, or drop model.distill"
            )
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


def reject_options(model: str, **options: Any) -> None:
    """Raise ``ValueError`` naming the first option that is set (not ``None``/0) although ``model`` ignores it."""
    for key, value in options.items():
        if value not in (None, 0, 0.0, False):
            raise ValueError(
                f"model {model!r} does not support {key}={value!r}; leave it unset for this model "
                f"(the popevit ViT presets {[n for n in MODELS.names() if MODELS.get(n).is_vit]} take every option)"
            )


# ---------------------------------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file without executing pickle code.

    Args:
        path: ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (a state dict, possibly under ``"model"`` or
            ``"state_dict"``, keys possibly prefixed ``"module."``).

    Returns:
        ``{key: tensor}`` on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {str(path)!r} not found; pass an existing .safetensors/.pth file, "
            f"or pretrained={HUB!r} to download (needs network)"
        )
    if path.suffix == ".safetensors":
        from popevit.artifact import load_weights

        state: Any = load_weights(path)
    elif path.suffix in WEIGHT_SUFFIXES:
        try:  # weights_only: a pickle that names anything but tensors is refused before it runs
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            raise ValueError(
                f"{str(path)!r} is not a plain state dict of tensors ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}); popevit loads weights without running code: use weights saved "
                "with torch.save(model.state_dict()) or safetensors"
            ) from None
    else:
        raise ValueError(f"unsupported weight file {str(path)!r}; expected one of {WEIGHT_SUFFIXES}")
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a flat state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _probe(host: str, timeout: float) -> bool:
    """True when a TCP connection to ``host:443`` opens within ``timeout`` seconds (DNS included)."""
    ok: list[bool] = []

    def target() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def hub_state_dict(name: str, timeout: float = 5.0) -> dict[str, torch.Tensor]:
    """Download the library weights of a model, or fail fast with a clear message when offline."""
    spec = MODELS.get(name)
    if spec.hub is None:
        raise ValueError(f"model {name!r} has no hub weights; pass a local weight file as pretrained=PATH")
    offline_env = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "POPEVIT_OFFLINE")
    )
    if offline_env or (spec.hub_host is not None and not _probe(spec.hub_host, timeout)):
        why = "offline mode is set" if offline_env else f"{spec.hub_host} is unreachable"
        raise RuntimeError(
            f"cannot download pretrained weights for {name!r}: {why}. Download them on a connected machine and pass "
            f"the file: create_model({name!r}, pretrained='/path/to/weights.safetensors')"
        )
    return spec.hub()


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: re-initialised keys (head, new modules) and adapted keys."""

    reinitialised: list[str]
    adapted: list[str]


def read_source(name: str, source: str | Path) -> dict[str, torch.Tensor]:
    """The state dict behind a ``pretrained=`` value: ``"hub"`` downloads, anything else is a local file."""
    if str(source) == HUB and not Path(source).exists():
        return hub_state_dict(name)
    return read_state_dict(source)


def load_pretrained(model: nn.Module, name: str, source: str | Path) -> LoadReport:
    """Load pretrained weights into ``model`` (built by ``create_model(name, ...)``) in place.

    Args:
        model: the freshly built model.
        name: its registered name (selects stem, head and adaptation rules).
        source: local weight file, or ``"hub"``.

    Returns:
        A :class:`LoadReport`; the same is logged at INFO level.

    Raises:
        RuntimeError: keys other than the head and the model's new modules are missing, or keys are unexpected.
    """
    return load_state(model, name, read_source(name, source), source=str(source))


def load_state(model: nn.Module, name: str, state: dict[str, torch.Tensor], source: str = "<state>") -> LoadReport:
    """Adapt ``state`` (stem channels, position tables, classifier), then load it strictly; see ``load_pretrained``."""
    from timm.models import adapt_input_conv

    spec = MODELS.get(name)
    state = dict(state)
    target = model.state_dict()
    adapted: list[str] = []
    if spec.stem in state and spec.stem in target and state[spec.stem].shape[1] != target[spec.stem].shape[1]:
        state[spec.stem] = adapt_input_conv(target[spec.stem].shape[1], state[spec.stem])
        adapted.append(spec.stem)
    if spec.adapt_state is not None:
        before = {k: v.shape for k, v in state.items()}
        state = spec.adapt_state(model, state)
        adapted += [k for k, v in state.items() if k in before and before[k] != v.shape]
    head_keys = [k for k in state if k.startswith(spec.head + ".")]
    replaced = [k for k in head_keys if k not in target or state[k].shape != target[k].shape]
    for k in replaced:
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(replaced) | {k for k in target if k.startswith(spec.head + ".") and k not in state}
    bad_missing = [k for k in missing if k not in allowed and not spec.fresh(k)]
    if bad_missing or unexpected:
        raise RuntimeError(
            f"weights {str(source)!r} do not fit model {name!r}: missing {bad_missing[:8]}"
            f"{' ...' if len(bad_missing) > 8 else ''}, unexpected {list(unexpected)[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}; is this a checkpoint of {name!r}?"
        )
    report = LoadReport(reinitialised=sorted(missing), adapted=adapted)
    log.info("loaded %s into %s: re-initialised %s, adapted %s", source, name, report.reinitialised, adapted)
    return report
