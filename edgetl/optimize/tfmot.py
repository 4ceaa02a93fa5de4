"""Importing tensorflow-model-optimization (tfmot) and tf_keras without switching Keras 2 on for the process.

Importing tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process; `load_tfmot()` puts the variable
back at once, so Keras 3 code (train, export) keeps working in the same process.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from edgetl.core.errors import ModelError


def load_tfmot() -> tuple[Any, Any]:
    """(tf_keras, tfmot), imported without leaving TF_USE_LEGACY_KERAS=1 behind for Keras 3 code.

    Raises:
        ModelError: tensorflow-model-optimization or tf-keras is not installed.
    """
    import tensorflow as tf

    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve tf.keras to Keras 3 first: tfmot reads it after setting the variable, and the lazy
    # loader must not pick tf_keras for the rest of the process.
    with contextlib.suppress(Exception):
        _ = tf.keras.version
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        raise ModelError(f"edgetl optimize needs tensorflow-model-optimization and tf-keras ({exc}). Install them: "
                         "pip install tensorflow-model-optimization tf-keras.") from None
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return tf_keras, tfmot
