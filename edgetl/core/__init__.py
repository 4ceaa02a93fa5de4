"""Core: errors, atomic files, native stderr, TensorFlow loading, progress, metrics and plots."""
