"""Training: the two-stage transfer-learning job, its checkpoints and device placement."""

from edgetl.train.job import (  # noqa: F401
    HISTORY_COLUMNS,
    AlreadyComplete,
    TrainResult,
    default_output,
    plan,
    resume,
    train,
)
