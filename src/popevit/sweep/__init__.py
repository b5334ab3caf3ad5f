"""Hyper-parameter sweeps as Optuna studies: grids and TPE ranges over config keys, seeds, summaries and plots.

``run_sweep(SweepSpec(...))`` trains every trial into its own run directory (see ``popevit.training.run``) and
records validation metrics in the study; ``write_summary`` turns the study into tables and plots.
"""

from __future__ import annotations

from popevit.sweep.runner import SweepResult, SweepSpec, default_storage, open_storage, run_sweep
from popevit.sweep.space import Range, SearchSpace, parse_grid, parse_range, run_name
from popevit.sweep.summary import configuration_table, write_summary

__all__ = [
    "Range",
    "SearchSpace",
    "SweepResult",
    "SweepSpec",
    "configuration_table",
    "default_storage",
    "open_storage",
    "parse_grid",
    "parse_range",
    "run_name",
    "run_sweep",
    "write_summary",
]
