"""Explanation methods behind one strict registry: a model, a batch and target classes in, heatmaps out.

Every method has the signature ``method(model, x, target) -> maps``: ``x`` is the (B, C, S, S) model input,
``target`` the (B,) class indices to explain, ``maps`` a non-negative (B, h, w) float tensor on the CPU, at the
method's native resolution (the patch grid for rollouts, the input size for Grad-CAM). :func:`upsample` brings any
map to the input size. ``random`` is the baseline every faithfulness number is compared against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from popevit.explain.gradcam import grad_cam
from popevit.explain.rollout import attention_rollout, gradient_rollout
from popevit.models import capture_attention
from popevit.registry import Registry


class Method(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor: ...


METHODS: Registry[Method] = Registry("explanation method")
ATTENTION_METHODS: frozenset[str] = frozenset({"rollout", "grad-rollout"})


def register_method(name: str) -> Callable[[Method], Method]:
    """Decorator registering an explanation method under ``name`` (duplicates raise)."""
    return METHODS.register(name)


def list_methods() -> list[str]:
    """Registered method names, sorted (``random`` is the baseline)."""
    return METHODS.names()


def has_attention(model: nn.Module) -> bool:
    """Whether :func:`popevit.models.capture_attention` can record this model's attention (i.e. it is a ViT)."""
    try:
        with capture_attention(model):
            return True
    except ValueError:
        return False


def native_grid(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """The resolution a map of ``model`` naturally has: a ViT's patch grid, else the input size over 32 (ResNets)."""
    if has_attention(model):
        with capture_attention(model) as rec, torch.no_grad():
            model(x[:1])
        return rec.grid
    return max(1, x.shape[-2] // 32), max(1, x.shape[-1] // 32)


def methods_for(model: nn.Module) -> list[str]:
    """The methods that apply to ``model``: every method for a ViT, all but the attention ones otherwise."""
    vit = has_attention(model)
    return [m for m in list_methods() if vit or m not in ATTENTION_METHODS]


def _capture(model: nn.Module, method: str):
    if not has_attention(model):
        raise ValueError(
            f"method {method!r} needs a Vision Transformer with capturable attention, not {type(model).__name__}; "
            "use --method gradcam for CNNs such as resnet18"
        )
    return capture_attention(model)


@register_method("rollout")
def rollout_method(
    model: nn.Module, x: Tensor, target: Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Attention rollout (class-agnostic: ``target`` is ignored, as in Abnar & Zuidema 2020). Returns (B, gh, gw)."""
    del target
    with _capture(model, "rollout") as rec, torch.no_grad():
        model(x)
        maps = attention_rollout(
            rec.attn, num_prefix_tokens=rec.num_prefix_tokens, grid=rec.grid, pool=rec.pool,
            head_fusion=head_fusion, discard_ratio=discard_ratio,  # type: ignore[arg-type]
        )  # fmt: skip
    return maps.cpu()


@register_method("grad-rollout")
def grad_rollout_method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Gradient-weighted rollout of ``target`` logits (Chefer et al. 2021). Returns (B, gh, gw)."""
    with _capture(model, "grad-rollout") as rec, torch.enable_grad():
        logits = model(x)  # (B, K)
        score = logits.gather(1, target.to(logits.device).view(-1, 1)).sum()
        # nn.MultiheadAttention returns a reshaped view of the probabilities it used: differentiate its base.
        used = [a._base if a._base is not None and a._base.numel() == a.numel() else a for a in rec.attn]
        grads = torch.autograd.grad(score, used, allow_unused=True)
        grads = [None if g is None else g.reshape(a.shape) for g, a in zip(grads, rec.attn, strict=True)]
        if any(g is None for g in grads):
            raise RuntimeError(
                f"the attention recorded from {type(model).__name__} is not on the path to the logits, so it has no "
                "gradient (capture_attention recorded a copy); gradient rollout needs the probabilities the model "
                "actually used: use --method rollout or gradcam for this model"
            )
        maps = gradient_rollout(rec.attn, grads, num_prefix_tokens=rec.num_prefix_tokens, grid=rec.grid, pool=rec.pool)
    return maps.cpu()


@register_method("gradcam")
def gradcam_method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM via ``pytorch_grad_cam``; ViTs get the token-to-grid reshape. Returns (B, S, S)."""
    layout = None
    if has_attention(model):
        with capture_attention(model) as rec, torch.no_grad():
            model(x[:1])
        layout = (rec.num_prefix_tokens, rec.grid)
    return grad_cam(model, x, target, layout=layout)


@register_method("random")
def random_method(
    model: nn.Module, x: Tensor, target: Tensor, *, grid: tuple[int, int] = (8, 8), seed: int = 0
) -> Tensor:
    """Uniform random maps on a ``grid`` (seeded): the chance baseline. Returns (B, gh, gw)."""
    del model, target
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[0], *grid, generator=g)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, h, w) maps to (B, *size); maps already at ``size`` are returned unchanged."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def explain_batch(model: nn.Module, x: Tensor, target: Tensor, method: str, **options) -> Tensor:
    """Run a registered method and bring its maps to the input size.

    Args:
        model: eval-mode classifier.
        x: (B, C, S, S) model input.
        target: (B,) class indices to explain.
        method: registered name (see :func:`list_methods`); unknown names raise with a did-you-mean hint.
        **options: method options (e.g. ``head_fusion``, ``discard_ratio`` for rollout).

    Returns:
        (B, S, S) non-negative maps on the CPU.
    """
    fn = METHODS.get(method)
    maps = fn(model, x, target, **options)  # (B, h, w)
    return upsample(maps.float().clamp_min(0), tuple(x.shape[-2:]))
