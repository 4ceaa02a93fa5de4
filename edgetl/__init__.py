"""edgetl: transfer learning to the edge (train, export, evaluate)."""

__version__ = "0.1.0"
