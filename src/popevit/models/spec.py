"""The model registry: what a registered model name stands for (:class:`ModelSpec`) and :data:`MODELS`.

``presets.py`` (the popevit ViT sizes) and ``baselines.py`` (timm/torchvision models) register their models here;
``factory.create_model`` builds them and ``weights`` loads their pretrained weights. Keeping the registry apart from
both lets the model files register without importing the factory that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from popevit.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """How to build and load one registered model.

    Attributes:
        build: ``build(**options) -> nn.Module``; raises ``ValueError`` for options it cannot honour.
        is_vit: the model takes a ``pos_enc`` (a popevit ViT preset).
        head: module prefix of the classifier (replaced for the task; the only trainable part when frozen).
        stem: state-dict key of the input convolution weight (adapted to 1 channel).
        hub: returns the library's pretrained state dict (downloads); ``None`` when there is none.
        adapt_state: ``adapt_state(model, state) -> state``, e.g. resampling position tables.
        fresh: ``fresh(key) -> bool`` for parameters expected to be absent from a checkpoint (new modules).
        description: one line for ``popevit models``.
    """

    build: Callable[..., nn.Module]
    is_vit: bool
    head: str
    stem: str
    hub: Callable[[], dict[str, torch.Tensor]] | None = None
    adapt_state: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    fresh: Callable[[str], bool] = field(default=lambda key: False)
    description: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, spec: ModelSpec) -> None:
    """Add ``spec`` under ``name``; duplicates raise."""
    MODELS.add(name, spec)


def reject_options(model: str, **options: Any) -> None:
    """Raise ``ValueError`` naming the first option that is set (not ``None``/0) although ``model`` ignores it."""
    for key, value in options.items():
        if value not in (None, 0, 0.0, False):
            raise ValueError(
                f"model {model!r} does not support {key}={value!r}; leave it unset for this model "
                f"(the popevit ViT presets {[n for n in MODELS.names() if MODELS.get(n).is_vit]} take every option)"
            )
