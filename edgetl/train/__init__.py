"""Training: the two-stage transfer-learning job, its checkpoints and device placement."""

from edgetl.rundir import HISTORY_COLUMNS  # noqa: F401  (history.csv's columns; kept here for existing imports)
from edgetl.train.job import (  # noqa: F401
    AlreadyComplete,
    TrainResult,
    default_output,
    plan,
    resume,
    train,
)
