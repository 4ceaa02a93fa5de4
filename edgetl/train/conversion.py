"""The frozen base's float32 TFLite conversion (edgetl.train.engine runs and caches it), and one trace and
conversion shared by the sizes of one base (AnySizeForward, for the search's candidates).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edgetl.core.errors import first_line

log = logging.getLogger("edgetl")


def convert_frozen(concrete: Any) -> bytes:
    """The float32 TFLite flatbuffer of a traced TensorFlow function (one float input, one output), its variables
    frozen into constants.

    The direct route (frozen_graph_def, then the converter from that GraphDef) takes 0.5 s for MobileNetV2 1.0 at
    224 where the public route takes 1.4 s: the public one rebuilds a concrete function from the frozen graph
    twice (once when freezing, once more inside the v2 converter), copying every op in Python, while the MLIR
    conversion itself is 0.3 s. Both give the same network (features equal to the bit on real photos). Any
    failure of the direct route (a graph it does not take) falls back to the public one.
    """
    import tensorflow as tf

    try:
        graph_def, (name, shape), output = frozen_graph_def(concrete)
        converter = tf.compat.v1.lite.TFLiteConverter(graph_def, None, None, input_arrays_with_shape=[(name, shape)],
                                                      output_arrays=[output])
        return converter.convert()
    except Exception as exc:  # noqa: BLE001 - the public route below converts whatever TensorFlow can
        log.debug("feature pass: the direct conversion failed (%s); converting through the concrete function",
                  first_line(exc))
    # Freezing the variables first makes the conversion about 4x faster than from_keras_model
    # (MobileNetV2-224: 10.9 s against 44.5 s on the same loaded cores).
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()


def frozen_graph_def(concrete: Any) -> tuple[Any, tuple[str, list[int]], str]:
    """(GraphDef with the variables as constants, (input name, shape with -1 for unknown sizes), output name) of
    a traced function with one non-resource input and one output.

    TensorFlow's freezing step without its last one (rebuilding a function from the result): there is no public
    API for it, so this reaches into convert_to_constants (TensorFlow is pinned to one minor version in
    pyproject.toml; convert_frozen falls back to the public route if this ever breaks).
    """
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants as freezing

    # The caller's inputs come first; the captured tensors (variables, and constants such as a Normalization
    # layer's mean) follow, and freezing turns all of those into constants.
    inputs = concrete.inputs[:len(tf.nest.flatten(concrete.structured_input_signature))]
    outputs = list(concrete.outputs)
    if len(inputs) != 1 or inputs[0].dtype != tf.float32 or len(outputs) != 1 or not outputs[0].name.endswith(":0"):
        raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs; the direct route takes one of each")
    data = freezing._FunctionConverterDataInEager(func=concrete, lower_control_flow=True, aggressive_inlining=False)
    graph_def, _ = freezing._replace_variables_by_constants(converter_data=data)
    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    if placeholders != [inputs[0].name.split(":")[0]]:
        raise ValueError(f"the frozen graph keeps inputs {placeholders}")
    shape = [-1 if d is None else int(d) for d in inputs[0].shape]
    return graph_def, (inputs[0].name.split(":")[0], shape), outputs[0].name.split(":")[0]


class AnySizeForward:
    """One trace and one float32 TFLite conversion of an extractor that takes images of any size, for the feature
    passes of classifiers of several sizes on the same base (the search's candidates of one backbone and width).

    A base built for any size (build_base's image_size None) computes at each size the same graph as one built for it:
    both conversions gave equal features to the bit under XNNPACK, at the same speed (MobileNetV2 1.0 at 96-224).
    Each pass then skips its own trace (about 0.4 s) and conversion (0.3-0.5 s); it still checks the converted file
    against TensorFlow's features at its own size.
    """

    def __init__(self, extractor: Any) -> None:
        """extractor: a Keras model from float32 images (None, None, None, 3), 0..255, to features."""
        self.extractor = extractor
        self.trace_cpu_seconds = 0.0
        self._concrete: Any = None
        self._blob: bytes | None = None

    def concrete(self) -> Any:
        """The traced TensorFlow function on (None, None, None, 3) float32 images (traced at the first call)."""
        import tensorflow as tf

        if self._concrete is None:
            extractor = self.extractor

            @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
            def forward(images: tf.Tensor) -> tf.Tensor:
                return extractor(images, training=False)

            cpu0 = time.thread_time()
            self._concrete = forward.get_concrete_function()
            self.trace_cpu_seconds = time.thread_time() - cpu0
        return self._concrete

    def blob(self) -> bytes:
        """The conversion (made at the first call): one file for every size, resized at load."""
        if self._blob is None:
            self._blob = convert_frozen(self.concrete())
        return self._blob
