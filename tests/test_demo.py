from __future__ import annotations

from popevit.demo import DEMO_PES, format_table, run_demo


def test_demo_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    lines: list[str] = []
    rows = run_demo(tmp_path, per_class=10, epochs=1, echo=lines.append)
    assert [r.pos_enc for r in rows] == list(DEMO_PES)
    for r in rows:
        assert (r.run_dir / "model.safetensors").is_file() and (r.run_dir / "eval" / "metrics.json").is_file()
        for value, lo, hi in (r.accuracy, r.auroc_macro):
            # the resampled metric sums in another order than the point estimate: on 4 test images every valid
            # resample has the point's value, up to one ulp (0.16666666666666666 vs ...69)
            assert 0.0 <= lo <= value + 1e-12 and value - 1e-12 <= hi <= 1.0
    table = format_table(rows)
    assert table.count("\n") == 1 + len(DEMO_PES) and "vit_demo + pope" in table
    again = run_demo(tmp_path, per_class=10, epochs=1, echo=lines.append)
    assert any("reusing" in line for line in lines)
    assert [r.accuracy for r in again] == [r.accuracy for r in rows]
