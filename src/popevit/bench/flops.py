"""FLOP counts with ``torch.utils.flop_counter`` and the machine's matmul peak.

``FlopCounterMode`` counts 2 FLOPs per multiply-add of matmuls, convolutions and attention kernels (forward and
backward); element-wise work (softmax, GELU, LayerNorm, PoPE's softplus/cos/sin, the optimizer) is not counted, as is
usual for "model FLOPs" (Kaplan et al. 2020, arXiv:2001.08361, Sec. 2.1; PaLM's MFU, arXiv:2204.02311, App. B).
torch 2.x registers formulas for the CUDA SDPA kernels but not for the CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so without help the fused attention of ``none``/RoPE models
would count as zero on CPU while PoPE's explicit path counts; :data:`CPU_SDPA_FORMULAS` adds the same formulas for it.

The peak is measured, not looked up: the best throughput of square float32 (or bf16 on GPU) matrix products at a few
sizes (:func:`matmul_peak`), with the same thread count as the benchmark. "Share of peak" is then the achieved
GFLOP/s of a training step over that, a model-FLOP utilisation against what this machine's BLAS can do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_sdpa_formulas() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    out: dict[Any, Callable[..., int]] = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_fwd),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_bwd),
    ):
        if hasattr(aten, name):  # present in every torch >= 2.2
            out[getattr(aten, name)] = fn
    return out


CPU_SDPA_FORMULAS = _cpu_sdpa_formulas()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs executed by ``fn()`` (matmuls, convolutions, attention; forward and backward), CPU attention included.

    Args:
        fn: runs the work once, e.g. a forward pass, or forward + ``loss.backward()``.

    Returns:
        Total FLOPs (2 per multiply-add).
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + cross-entropy + backward of ``model`` on ``(x, y)`` (gradients are cleared after)."""

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    try:
        return count_flops(step)
    finally:
        model.zero_grad(set_to_none=True)


def matmul_peak(
    device: str = "cpu",
    sizes: tuple[int, ...] = (256, 512, 1024, 2048),
    dtype: torch.dtype | None = None,
    min_time: float = 0.3,
) -> dict[str, Any]:
    """Best achieved throughput of ``(n, n) @ (n, n)`` products: the machine's practical matmul peak.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        sizes: matrix sides to try; the peak is the best of them.
        dtype: element type; default float32 on CPU, bfloat16 on CUDA.
        min_time: seconds of repeated products timed per size (after one warm-up product).

    Returns:
        ``{"peak_gflops": best, "dtype": ..., "by_size": {n: GFLOP/s}}``.
    """
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_size: dict[int, float] = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=c)  # warm-up
        sync()
        best = float("inf")
        t_start = time.perf_counter()
        reps = 0
        while reps < 3 or time.perf_counter() - t_start < min_time:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            sync()
            best = min(best, time.perf_counter() - t0)  # the least disturbed product
            reps += 1
        by_size[n] = 2 * n**3 / best / 1e9
    return {"peak_gflops": max(by_size.values()), "dtype": str(dtype).removeprefix("torch."), "by_size": by_size}


def matmul_reference(
    n: int, flops_target: float, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[Callable[[], None], int]:
    """A repeated ``(n, n) @ (n, n)`` product doing about ``flops_target`` FLOPs, to time *beside* a model.

    Timed in the same interleaved rounds as the training steps, it gives a load-robust share of peak: each round
    compares the step's GFLOP/s with the matmul's GFLOP/s under the same momentary load.

    Returns:
        ``(fn, flops)``: the closure and the FLOPs one call performs.
    """
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    reps = max(1, round(flops_target / (2 * n**3)))

    def fn() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=c)

    return fn, 2 * n**3 * reps
