"""Which fused attention kernel each positional encoding gets, and the cost of PoPE's unequal q/k and v widths.

``F.scaled_dot_product_attention`` (SDPA) picks the first backend, in torch's priority order (flash, memory-
efficient, math, cuDNN), whose constraints the inputs meet. PoPE hands SDPA q/k of width 2D and v of width D
(Gopalakrishnan et al. 2025, arXiv:2509.10534; see ``popevit.models.pos_enc.pope``); FlashAttention (Dao 2023,
arXiv:2307.08691) needs equal head dims, so PoPE is excluded from it. :func:`sdpa_backends` records, per PE, every
backend that accepts the model's real q/k/v/bias (forward and backward) and the time of each; :func:`pope_layouts`
times the alternatives for PoPE's attention core:

- ``unequal``: SDPA on (q, k: 2D; v: D), whatever backend torch picks;
- ``pad_v``: v zero-padded to 2D, SDPA (flash-eligible), output sliced back to D (exact: the extra columns are 0);
- ``explicit``: ``softmax(q k^T * s) v`` with three ops (popevit's CPU path for PoPE).

Both run on CPU too, where torch's only fused kernel is the flash-style ``_scaled_dot_product_flash_attention_for_cpu``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from popevit.bench.models import BenchSize, build_model
from popevit.bench.timing import interleaved, summarize, synchronizer
from popevit.models.attention import Attention

BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def _priority() -> list[str]:
    """SDPA backends in the order torch tries them (a private torch API: the documented order when it is gone)."""
    try:
        from torch.nn.attention import _cur_sdpa_kernel_backends

        order = [b.name for b in _cur_sdpa_kernel_backends(with_priority=True)]
        return [b for b in order if b in BACKENDS]
    except (ImportError, TypeError, AttributeError):
        return ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION"]


def attention_inputs(pe: str, size: BenchSize, device: str, dtype: torch.dtype, batch: int | None = None):
    """The real ``(q, k, v, bias, scale)`` that block 0 of the ``pe`` model hands to attention at ``size``.

    Returns:
        q, k ``(B, H, N, Dq)``, v ``(B, H, N, D)``, bias ``(1, H, N, N)`` or ``None``, and the softmax scale.
    """
    model = build_model(pe, size).to(device)
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    grabbed: dict[str, Any] = {}

    def pre_hook(_m, args):
        grabbed["x"], grabbed["pos_enc"], grabbed["grid"] = args
        raise _Stop

    handle = attn.register_forward_pre_hook(pre_hook)
    x, _ = _images(size, batch or size.batch, device)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    tokens, pos_enc, grid = grabbed["x"], grabbed["pos_enc"], grabbed["grid"]
    B, N, _ = tokens.shape
    with torch.no_grad():
        q, k, v = attn.qkv(tokens).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pos_enc.transform_qk(q, k, attn.layer, grid)  # each (B, H, N, Dq)
        bias = pos_enc.attn_bias(attn.layer, grid)  # (H, N, N) or None
    bias = None if bias is None else bias.unsqueeze(0).to(dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype), bias, pos_enc.attn_scale()


class _Stop(Exception):
    """Raised by the pre-hook once block 0's inputs are captured."""


def _images(size: BenchSize, batch: int, device: str) -> tuple[Tensor, None]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, size.img_size, size.img_size, generator=g).to(device), None


def _fwd_bwd(fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor) -> Callable[[], None]:
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

    def run() -> None:
        out = fn(q, k, v)
        out.backward(torch.ones_like(out))
        q.grad = k.grad = v.grad = None

    return run


def _sdpa(bias: Tensor | None, scale: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _with_backend(fn: Callable[[], None], backend: str) -> Callable[[], None]:
    def run() -> None:
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            fn()

    return run


def _accepts(fn: Callable[[], None]) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch explains every refusal with a UserWarning
            fn()
        return True
    except RuntimeError:
        return False


def sdpa_backends(
    pes: list[str], size: BenchSize, device: str, *, bf16: bool, repeats: int = 5, batch: int | None = None
) -> dict[str, Any]:
    """For each PE: the SDPA backends that accept its attention inputs (fwd + bwd), the one torch picks, their times.

    Args:
        pes: positional encodings.
        size: model size (block 0 of its model supplies the inputs).
        device: ``"cpu"`` or ``"cuda"``.
        bf16: bfloat16 inputs (GPU) instead of float32.
        repeats: timed rounds per backend (interleaved, median reported).
        batch: attention batch (default the size's training batch).

    Returns:
        ``{pe: {"shapes": ..., "accepted": [...], "selected": name, "ms": {backend: median fwd+bwd ms}}}``.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    order = _priority()
    out: dict[str, Any] = {"priority": order, "dtype": str(dtype).removeprefix("torch."), "by_pe": {}}
    for pe in pes:
        q, k, v, bias, scale = attention_inputs(pe, size, device, dtype, batch)
        base = _fwd_bwd(_sdpa(bias, scale), q, k, v)
        fns = {b: _with_backend(base, b) for b in order}
        accepted = [b for b in order if _accepts(fns[b])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = interleaved({b: fns[b] for b in accepted}, repeats=repeats, warmup=1, sync=synchronizer(device))
        out["by_pe"][pe] = {
            "q": list(q.shape),
            "v": list(v.shape),
            "bias": bias is not None,
            "accepted": accepted,
            "selected": accepted[0] if accepted else None,
            "ms": {b: summarize(t)["median_s"] * 1e3 for b, t in times.items()},
        }
    return out


def pope_layouts(
    size: BenchSize, device: str, *, bf16: bool, repeats: int = 5, batch: int | None = None, pe: str = "pope"
) -> dict[str, Any]:
    """Time PoPE's attention core (forward + backward) in the ``unequal``, ``pad_v`` and ``explicit`` layouts.

    ``pad_v`` is also timed with each backend forced where it is accepted (``pad_v:FLASH_ATTENTION``, ...), and
    ``unequal`` likewise, so the flash-vs-efficient question is answered directly. Outputs are checked equal.

    Returns:
        ``{"ms": {layout: median ms}, "ratio_to_unequal": {...}, "max_abs_diff": {...}, "shapes": ...}``.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    q, k, v, bias, scale = attention_inputs(pe, size, device, dtype, batch)
    d = v.shape[-1]

    def unequal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    def pad_v(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        vp = F.pad(v, (0, q.shape[-1] - d))  # (B, H, N, 2D), zeros on the right
        return F.scaled_dot_product_attention(q, k, vp, attn_mask=bias, scale=scale)[..., :d]

    def explicit(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        logits = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
        if bias is not None:
            logits = logits + bias
        return logits.softmax(dim=-1) @ v

    layouts = {"unequal": unequal, "pad_v": pad_v, "explicit": explicit}
    fns: dict[str, Callable[[], None]] = {name: _fwd_bwd(f, q, k, v) for name, f in layouts.items()}
    for name in ("unequal", "pad_v"):
        for b in _priority():
            forced = _with_backend(fns[name], b)
            if b != "MATH" and _accepts(forced):
                fns[f"{name}:{b}"] = forced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            ref = explicit(q.float(), k.float(), v.float())
            diffs = {n: (f(q, k, v).float() - ref).abs().max().item() for n, f in layouts.items()}
        times = interleaved(fns, repeats=repeats, warmup=1, sync=synchronizer(device))
    ms = {n: summarize(t)["median_s"] * 1e3 for n, t in times.items()}
    return {
        "q": list(q.shape),
        "v": list(v.shape),
        "dtype": str(dtype).removeprefix("torch."),
        "ms": ms,
        "ratio_to_unequal": {n: t / ms["unequal"] for n, t in ms.items()},
        "max_abs_diff": diffs,
    }
