"""popevit models: one ViT backbone with swappable 2-D positional encodings, plus pretrained/CNN baselines.

Public API::

    create_model(name, *, num_classes, ...) -> nn.Module     # every registered model
    list_models() / list_pos_encs() / is_vit(name)
    capture_attention(model)                                 # context manager -> AttentionRecord

See ``vit.py`` (backbone), ``pos_enc/`` (one file per PE family), ``presets.py`` (sizes), ``baselines.py``
(timm/torchvision), ``spec.py`` (the registry), ``factory.py`` (``create_model``) and ``weights.py`` (pretrained
loading).
"""

from __future__ import annotations

from popevit.models.attention import AttentionRecord, attend, capture_attention
from popevit.models.factory import create_model, is_vit, list_models
from popevit.models.pos_enc import POS_ENCS, PositionalEncoding, build_pos_enc, list_pos_encs, register_pos_enc
from popevit.models.spec import MODELS, ModelSpec
from popevit.models.vit import ViT, ViTConfig
from popevit.models.weights import load_pretrained

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
