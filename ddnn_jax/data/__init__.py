"""Datasets and the input pipeline: tfds loading, offline preparation, normalisation, augmentation.

``catalog`` lists the supported datasets and their policies, ``prepare`` writes them to disk
(TensorFlow needed), ``datasets`` reads them into memory (no TensorFlow), ``images`` reads a folder
of images, and ``transforms`` holds the array functions. Import the names from this package:
``from ddnn_jax.data import load_dataset, normalize``.
"""

from ddnn_jax.data.catalog import DATASETS, DatasetPolicy, check_dataset_name
from ddnn_jax.data.datasets import DataSplits, Split, load_dataset, split_train_validation
from ddnn_jax.data.images import ImageFolder, read_image_folder
from ddnn_jax.data.prepare import prepare_dataset
from ddnn_jax.data.transforms import augment, channel_statistics, normalize

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetPolicy",
    "ImageFolder",
    "Split",
    "augment",
    "channel_statistics",
    "check_dataset_name",
    "load_dataset",
    "normalize",
    "prepare_dataset",
    "read_image_folder",
    "split_train_validation",
]
