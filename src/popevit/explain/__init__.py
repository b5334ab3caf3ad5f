"""Where did the model look? Attention rollout, gradient rollout, Grad-CAM, overlays and measured faithfulness.

- :mod:`popevit.explain.rollout`: the rollout maths on plain attention tensors (Abnar & Zuidema 2020; Chefer et al.
  2021);
- :mod:`popevit.explain.gradcam`: Grad-CAM through ``pytorch_grad_cam``, with the token-to-grid reshape for ViTs;
- :mod:`popevit.explain.methods`: the method registry (``rollout``, ``grad-rollout``, ``gradcam``, ``random``);
- :mod:`popevit.explain.faithfulness`: deletion/insertion AUC, mask mass share, pointing game;
- :mod:`popevit.explain.inputs`: the images, preprocessed as in training, with their lesion masks aligned;
- :mod:`popevit.explain.overlay`: overlays and galleries;
- :mod:`popevit.explain.explain`: :func:`explain_run`, the ``popevit explain`` driver.
"""

from __future__ import annotations

from popevit.explain.explain import ExplainResult, explain_run, measure_faithfulness
from popevit.explain.inputs import preprocess_mask
from popevit.explain.methods import METHODS, explain_batch, list_methods, methods_for, register_method
from popevit.explain.rollout import attention_rollout, gradient_rollout, rollout_matrix

__all__ = [
    "METHODS",
    "ExplainResult",
    "attention_rollout",
    "explain_batch",
    "explain_run",
    "gradient_rollout",
    "list_methods",
    "measure_faithfulness",
    "methods_for",
    "preprocess_mask",
    "register_method",
    "rollout_matrix",
]
