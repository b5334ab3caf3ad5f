"""Pretrained weights of registered models: read a local file safely, or download from the hub when asked.

``pretrained=`` takes:

- ``None``: random initialisation.
- a path to a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (the latter read with
  ``torch.load(weights_only=True)``, so no pickle code runs). The classifier is replaced when its shape differs
  (another number of classes), a 1-channel model gets the RGB stem filters summed (timm's ``adapt_input_conv``),
  absolute position tables are resampled to the model's grid, and everything else is loaded strictly: missing or
  unexpected keys raise, naming them.
- the string ``"hub"``: timm's or torchvision's own download of the ImageNet weights, attempted only then. With
  ``HF_HUB_OFFLINE=1`` or ``POPEVIT_OFFLINE=1`` it is not attempted; a download that fails (offline, host
  unreachable) raises the hub client's error with how to pass a local file instead.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from popevit.io import shown
from popevit.models.spec import MODELS

log = logging.getLogger(__name__)

HUB = "hub"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "POPEVIT_OFFLINE")


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
        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{shown(path)}: not a readable safetensors file ({err}); it is damaged or truncated: restore it "
                "from a copy, or train again"
            ) from None
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


def hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Download the library weights of a model; the hub client's error, with the fix, when that fails."""
    spec = MODELS.get(name)
    if spec.hub is None:
        raise ValueError(f"model {name!r} has no hub weights; pass a local weight file as pretrained=PATH")
    fix = (
        "Download them on a connected machine and pass the file: "
        f"create_model({name!r}, pretrained='/path/to/weights.safetensors')"
    )
    offline = [v for v in OFFLINE_ENV if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if offline:
        raise RuntimeError(f"cannot download pretrained weights for {name!r}: {offline[0]} is set. {fix}")
    try:
        return spec.hub()
    except OSError as err:  # every hub client's network error is one (URLError, huggingface_hub's errors)
        raise RuntimeError(f"cannot download pretrained weights for {name!r}: {err}. {fix}") from err


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
