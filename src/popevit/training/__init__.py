"""Training engine: Lightning wraps the plain model; popevit supplies the recipe and the run directory."""

from popevit.training.run import RunResult, train, train_from_files
from popevit.training.rundir import RunDirError

__all__ = ["RunDirError", "RunResult", "train", "train_from_files"]
