"""edgetl: transfer learning to the edge (train, export, evaluate)."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source of truth, pyproject.toml: `edgetl --version`, manifests and file metadata say what pip installed.
    __version__ = version("edgetl")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
