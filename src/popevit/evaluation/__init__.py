"""Evaluation: predictions, metrics with bootstrap CIs, paired tests, plots and the HTML report.

Public API::

    EvalSource(data=None, manifest=None, split="test", img_size=None, tta=False, ...)          # source.py
    evaluate_run(run_dir, EvalSource(...), ...) -> dict                                       # evaluate.py
    compare_runs(groups, EvalSource(...), ...) -> dict                                        # compare.py
    run_study(groups, EvalSource(...), sizes=..., out=...) -> dict                            # study.py
    build_report(runs, out_html) -> Path                                                      # report.py
    metrics_with_ci / point_metrics / weighted_metrics                                        # metrics.py
    paired_bootstrap / mcnemar_exact / delong_test                                            # stats.py

Plotting and report modules import matplotlib; import them from their own modules.
"""

from __future__ import annotations

from popevit.evaluation.metrics import metric_names, metrics_with_ci, point_metrics, weighted_metrics
from popevit.evaluation.predictions import Predictions
from popevit.evaluation.stats import delong_test, mcnemar_exact, paired_bootstrap

__all__ = [
    "Predictions",
    "delong_test",
    "mcnemar_exact",
    "metric_names",
    "metrics_with_ci",
    "paired_bootstrap",
    "point_metrics",
    "weighted_metrics",
]
