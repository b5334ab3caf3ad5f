"""popevit.bench: the quick suite end to end through the CLI, FLOP counting by hand, timing and target logic.

No timing thresholds: only structure, positivity and exact arithmetic are asserted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from popevit.bench import (
    BenchSize,
    build_model,
    check_targets,
    count_flops,
    interleaved,
    peak_memory,
    percentile,
    summarize,
    timm_twin,
)
from popevit.cli.bench import bench


@pytest.fixture(scope="module")
def quick_result(phantom_root, tmp_path_factory) -> dict:
    app = typer.Typer()
    app.command()(bench)
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    res = CliRunner().invoke(app, ["--quick", "--json", str(out), "--data", str(phantom_root)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_json_has_every_section(quick_result):
    r = quick_result
    for key in (
        "machine",
        "config",
        "peak",
        "train",
        "inference",
        "memory",
        "loader",
        "epoch",
        "attention",
        "targets",
        "load_avg_start",
        "load_avg_end",
    ):
        assert key in r, key
    assert r["config"]["sizes"] == ["tiny"] and r["train"]["tiny"]["preset"] == "vit_p8_w32_d2"
    assert r["train"]["tiny"]["img_size"] == 32
    assert _positive(r["peak"]["peak_gflops"])
    assert len(r["load_avg_start"]) == 3


def test_quick_train_figures_are_positive_and_ratios_consistent(quick_result):
    models = quick_result["train"]["tiny"]["models"]
    assert set(models) == {"none", "pope", "rope_axial", "timm"}
    for name, row in models.items():
        for key in (
            "step_ms",
            "min_ms",
            "img_s",
            "ratio_none",
            "ratio_timm",
            "gflop_per_step",
            "gflops",
            "share_of_peak",
        ):
            assert _positive(row[key]), (name, key, row[key])
        assert len(row["samples_ms"]) == quick_result["config"]["repeats"] >= 5
        assert row["min_ms"] <= row["step_ms"]
    assert models["none"]["ratio_none"] == 1.0 and models["timm"]["ratio_timm"] == 1.0
    # PoPE's q/k are twice as wide, so its attention matmuls count more FLOPs than none's; RoPE adds no matmul.
    assert models["pope"]["gflop_per_step"] > models["none"]["gflop_per_step"]
    assert models["rope_axial"]["gflop_per_step"] == pytest.approx(models["none"]["gflop_per_step"])


def test_quick_other_sections(quick_result):
    r = quick_result
    for row in r["inference"]["tiny"]["models"].values():
        assert _positive(row["latency_ms_p50"]) and row["latency_ms_p95"] >= row["latency_ms_p50"]
        assert _positive(row["throughput_img_s"])
    assert r["inference"]["tiny"]["batch"] == 64
    for row in r["memory"]["tiny"]["models"].values():
        assert _positive(row["peak_total_mb"]) and row["peak_delta_mb"] >= 0 and _positive(row["params_mb"])
    assert r["loader"]["images"] == 48
    for key in ("cold_img_s", "warm_disk_img_s", "cached_img_s"):
        assert _positive(r["loader"][key])
    assert _positive(r["epoch"]["epoch_s"]) and r["epoch"]["model"] == "vit_p8_w32_d2"
    backends = r["attention"]["sdpa_backends"]["by_pe"]
    assert backends["none"]["selected"] is not None and backends["pope"]["q"][-1] == 2 * backends["pope"]["v"][-1]
    layouts = r["attention"]["pope_layouts"]
    assert max(layouts["max_abs_diff"].values()) < 1e-4  # pad_v and explicit compute the same attention
    assert all(t["met"] in (True, False, None) for t in r["targets"])


def test_flop_count_of_linear_matches_hand_count():
    torch.manual_seed(0)
    b, n_in, n_out = 4, 16, 8
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(b, n_in, requires_grad=True)
    fwd = 2 * b * n_in * n_out  # one multiply-add per (row, in, out)
    assert count_flops(lambda: layer(x)) == fwd
    # backward: grad wrt input (B, out) @ (out, in) and grad wrt weight (out, B) @ (B, in), same size each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * fwd
    x.requires_grad_(False)
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * fwd


def test_cpu_fused_attention_is_counted():
    b, h, n, d = 2, 3, 10, 8
    q = torch.randn(b, h, n, d)
    # QK^T and PV: two batched matmuls of B*H*N*N*D multiply-adds each
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * 2 * b * h * n * n * d


def test_interleaved_rotates_order_and_keeps_repeats():
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = interleaved(fns, repeats=5, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5, "c": 5}
    assert calls[:3] == ["a", "b", "c"] and calls[3:6] == ["b", "c", "a"]
    assert len(calls) == 3 * 7
    with pytest.raises(ValueError, match="repeats"):
        interleaved(fns, repeats=0)


def test_percentile_and_summary():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(xs, 50) == 3.0 and percentile(xs, 95) == pytest.approx(4.8) and percentile(xs, 0) == 1.0
    s = summarize(xs)
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["iqr_rel"] == pytest.approx(2.0 / 3.0)


def test_timm_twin_has_identical_dimensions():
    size = BenchSize("vit_p8_w32_d2", 32, 2, "")
    ours = build_model("none", size)
    twin = timm_twin(ours)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in twin.parameters())
    assert twin.num_prefix_tokens == ours.num_prefix_tokens and twin.embed_dim == ours.embed_dim
    assert len(twin.blocks) == len(ours.blocks) and twin.blocks[0].attn.num_heads == ours.blocks[0].attn.num_heads
    x = torch.randn(2, 1, 32, 32)
    assert twin(x).shape == ours(x).shape == (2, 4)


def test_peak_memory_sees_a_large_temporary():
    mb = 64

    def work() -> None:
        t = torch.ones(mb * 2**20 // 4)  # float32: mb MiB, touched
        assert t.sum().item() > 0

    out = peak_memory(work)
    assert out["peak_total_mb"] > 0
    if out["method"] == "VmHWM_reset":  # Linux: the reset high-water mark sees the temporary
        assert out["peak_delta_mb"] >= 0.8 * mb


def test_check_targets_logic():
    res = {
        "config": {"device": "cpu"},
        "train": {
            "seed": {
                "models": {
                    "none": {"ratio_none": 1.0, "ratio_timm": 0.98},
                    "pope": {"ratio_none": 1.2},
                    "rope_axial": {"ratio_none": 1.04},
                }
            },
            "cpu": {"models": {"pope": {"share_of_peak": 0.3}, "none": {"share_of_peak": 0.7}}},
        },
        "loader": {"cached_img_s": 5000.0},
    }
    by = {t["name"]: t for t in check_targets(res)}
    assert by["pope / none step time (seed)"]["met"] is False and by["pope / none step time (seed)"]["model"] == "pope"
    assert by["rope_axial / none step time (seed)"]["met"] is True
    assert by["rope_mixed / none step time (seed)"]["met"] is None
    assert by["none / timm step time (seed)"]["met"] is True
    assert by["CPU training GFLOP/s / matmul peak (pope, cpu size)"]["met"] is False
    assert by["CPU training GFLOP/s / matmul peak (none, cpu size)"]["met"] is True
    assert by["cached loader images/s"]["met"] is True
    assert by["CPU epoch of the default CPU configuration (s)"]["met"] is None


def test_bad_options_fail_with_a_hint():
    app = typer.Typer()
    app.command()(bench)
    res = CliRunner().invoke(app, ["--sizes", "sead", "--sections", "train"])
    assert res.exit_code == 2 and "seed" in res.output
    res = CliRunner().invoke(app, ["--quick", "--sections", "trian"])
    assert res.exit_code == 2 and "train" in res.output


@pytest.mark.gpu
def test_quick_bench_on_cuda(phantom_root):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from popevit.bench import quick_config, run_bench

    r = run_bench(quick_config(device="cuda", data=phantom_root))
    assert r["config"]["bf16_resolved"] is True
    assert all(_positive(row["step_ms"]) for row in r["train"]["tiny"]["models"].values())
    assert r["memory"]["tiny"]["models"]["none"]["method"] == "torch.cuda.max_memory_allocated"
    assert r["attention"]["sdpa_backends"]["by_pe"]["none"]["selected"] == "FLASH_ATTENTION"
    assert "pad_v" in r["attention"]["pope_layouts"]["ms"]
