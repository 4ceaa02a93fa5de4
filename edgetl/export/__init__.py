"""Export formats: one module each (tflite, onnx, saved_model)."""
