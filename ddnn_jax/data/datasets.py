"""A dataset in memory: its train, validation and test splits as uint8 arrays, read from a
prepared tfds directory (without TensorFlow for array_record files) and decoded once per process."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddnn_jax.common.limits import check_npz
from ddnn_jax.data.catalog import check_dataset_name
from ddnn_jax.data.prepare import prepared_builder, require_tensorflow
from ddnn_jax.data.transforms import channel_statistics


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's images and labels."""

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N] int32

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """The three splits of one dataset, with what training needs to know about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: np.ndarray  # [C] float32 per-channel mean of the training split, in [0, 1] units
    std: np.ndarray  # [C] float32 per-channel std of the training split, in [0, 1] units
    horizontal_flip: bool
    crop_padding: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    download: bool = False,
) -> DataSplits:
    """Loads a dataset into memory, preparing it first if needed.

    Args:
      name: one of ``DATASETS``.
      data_dir: tfds data directory (tfds's default when None).
      split_seed: seeds the train/validation split of the official train split.
      limit_train: keep only the first N training examples (after the split).
      limit_eval: keep only the first N validation and N test examples (None: whole).
      download: let tfds download the dataset if it is not prepared (needs network).

    Returns:
      The train, validation and (official) test splits and their normalisation statistics.
    """
    policy = check_dataset_name(name)
    builder = prepared_builder(policy.tfds_name, data_dir, download)
    official_train = _read_split(builder, "train")
    test = _read_split(builder, "test")
    train, val = split_train_validation(official_train, policy.validation_size, split_seed)
    if limit_train is not None:
        train = Split(train.images[:limit_train], train.labels[:limit_train])
    if limit_eval is not None:
        val = Split(val.images[:limit_eval], val.labels[:limit_eval])
        test = Split(test.images[:limit_eval], test.labels[:limit_eval])
    mean, std = channel_statistics(train.images, 1 / 255)
    num_classes = builder.info.features["label"].num_classes
    return DataSplits(
        name,
        train,
        val,
        test,
        num_classes,
        mean,
        std,
        policy.horizontal_flip,
        policy.crop_padding,
    )


def split_train_validation(split: Split, validation_size: int | float, seed: int) -> tuple[Split, Split]:
    """Deterministic random train/validation partition of one split."""
    n = len(split)
    n_val = validation_size if isinstance(validation_size, int) else round(n * validation_size)
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    return (
        Split(split.images[train_idx], split.labels[train_idx]),
        Split(split.images[val_idx], split.labels[val_idx]),
    )


# Decoded splits by (prepared data directory, split), oldest first: ``ddnn run`` loads the dataset
# for every stage and every short run of the local-weight study. The arrays are read-only, so no
# caller can change what the next one gets.
_DECODED: dict[tuple[str, str], Split] = {}
_DECODED_MAX = 4

# Each process that reads a dataset would otherwise decode every image again (~5 s for
# Fashion-MNIST's 70,000 PNGs on a 2-core CPU, against ~0.1 s to read the arrays back): the
# decoded split is kept beside the prepared files, under a name that says which files it came
# from, so that a re-prepared dataset is decoded afresh.
DECODED_PREFIX = "ddnn-decoded-"


def _read_split(builder, split: str) -> Split:
    """One split as read-only arrays, decoded once per process and, where the data directory
    is writable, once per prepared dataset."""
    key = (str(builder.data_dir), split)
    if key not in _DECODED:
        if len(_DECODED) >= _DECODED_MAX:
            del _DECODED[next(iter(_DECODED))]
        directory = Path(str(builder.data_dir))
        _DECODED[key] = _cached_split(directory, split, lambda: _decode_split(builder, split))
    return _DECODED[key]


def _fingerprint(directory: Path, split: str) -> str:
    """A digest of the names, sizes and modification times of the split's prepared files."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob(f"*-{split}.*")):
        if not path.name.startswith(DECODED_PREFIX):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _cached_split(directory: Path, split: str, decode: Callable[[], Split]) -> Split:
    """The split read back from its decoded copy in ``directory``, or decoded and (best effort:
    a read-only or full data directory only costs the time) saved there, written whole."""
    cache = directory / f"{DECODED_PREFIX}{split}-{_fingerprint(directory, split)}.npz"
    try:
        check_npz(cache)
        with np.load(cache, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        result = decode()
        _save_decoded(cache, result)
        return result
    images.flags.writeable = labels.flags.writeable = False
    return Split(images, labels)


def _save_decoded(cache: Path, split: Split) -> None:
    """Writes the decoded split to a temporary file and renames it to ``cache`` (replacing the
    copies of earlier preparations); where that fails, nothing is left behind."""
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            np.savez(f, images=split.images, labels=split.labels)
        for stale in cache.parent.glob(f"{cache.name.rsplit('-', 1)[0]}-*.npz"):
            stale.unlink(missing_ok=True)
        os.replace(partial, cache)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def _decode_split(builder, split: str) -> Split:
    """Reads one split whole: through tfds's random-access data source (array_record files,
    no TensorFlow needed) or, for datasets prepared as TFRecord files, through TensorFlow."""
    image_key, label_key = builder.info.supervised_keys
    if _random_access(builder):
        source = builder.as_data_source(split=split)
        examples = source.__getitems__(range(len(source)))
        images = np.stack([example[image_key] for example in examples]).astype(np.uint8)
        labels = np.asarray([example[label_key] for example in examples], np.int32)
    else:
        require_tensorflow(
            f"{builder.data_dir} holds '{builder.name}' as TFRecord files, which only TensorFlow "
            "reads: install the 'prepare' extra, or prepare it into a new directory with "
            "'ddnn prepare --data-dir NEW' (array_record files, read without TensorFlow)"
        )
        images, labels = _decode_with_tensorflow(builder, split)
    images.flags.writeable = labels.flags.writeable = False
    return Split(images, labels)


def _decode_with_tensorflow(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    batches = list(tfds.as_numpy(dataset.batch(8192)))  # large batches, no per-image Python work
    images = np.concatenate([images for images, _ in batches]).astype(np.uint8)
    labels = np.concatenate([labels for _, labels in batches]).astype(np.int32)
    return images, labels


def _random_access(builder) -> bool:
    from tensorflow_datasets.core import file_adapters

    return builder.info.file_format in file_adapters.FileFormat.with_random_access()
