"""popevit models: one ViT backbone with swappable 2-D positional encodings, plus pretrained/CNN baselines.

Public API::

    create_model(name, *, num_classes, ...) -> nn.Module     # every registered model
    list_models() / list_pos_encs() / is_vit(name)
    capture_attention(model)                                 # context manager -> AttentionRecord

See ``vit.py`` (backbone), ``pos_enc/`` (one file per PE family), ``presets.py`` (sizes), ``baselines.py``
(timm/torchvision) and ``factory.py`` (registry, pretrained loading).
"""

from __future__ import annotations

from popevit.models import baselines, presets  # noqa: F401  (registers the models)
from popevit.models.attention import AttentionRecord, attend, capture_attention
from popevit.models.factory import MODELS, ModelSpec, create_model, is_vit, list_models, load_pretrained
from popevit.models.pos_enc import POS_ENCS, PositionalEncoding, build_pos_enc, list_pos_encs, register_pos_enc
from popevit.models.vit import ViT, ViTConfig

__all__ = [
    "MODELS",
    "POS_ENCS",
    "AttentionRecord",
    "ModelSpec",
    "PositionalEncoding",
    "ViT",
    "ViTConfig",
    "attend",
    "build_pos_enc",
    "capture_attention",
    "create_model",
    "is_vit",
    "list_models",
    "list_pos_encs",
    "load_pretrained",
    "register_pos_enc",
]
