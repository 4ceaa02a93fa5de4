"""Data: scan a folder of labelled images, split it, decode images, build tf.data pipelines."""

from edgetl.data.decode import load_image, load_images, probe_image  # noqa: F401
from edgetl.data.pipeline import augmentation_layers, make_dataset  # noqa: F401
from edgetl.data.scan import IMAGE_EXTENSIONS, scan_eval_folder, scan_folder  # noqa: F401
from edgetl.data.splits import SPLITS, DataSplits, Item  # noqa: F401
