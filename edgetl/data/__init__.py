"""Data: scan a folder of labelled images, split it, decode images, build tf.data pipelines."""

from edgetl.data.scan import (  # noqa: F401
    IMAGE_EXTENSIONS,
    SPLITS,
    DataSplits,
    Item,
    augmentation_layers,
    load_image,
    load_images,
    make_dataset,
    probe_image,
    scan_eval_folder,
    scan_folder,
)
