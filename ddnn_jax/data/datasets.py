"""Datasets through tfds, held in memory as uint8 arrays; augmentation as jittable array code.

tfds is the source of every dataset. Fashion-MNIST is prepared offline from Debian's
``dataset-fashion-mnist`` package: its files are the original IDX files re-compressed, so the
gzip checksums tfds registers do not match. We decompress them, check the SHA-256 of the
decompressed bytes against the values below (which equal the originals'), and hand them to tfds's
own Fashion-MNIST generator through a builder subclass, never touching tfds's checksum registry.
Every other dataset (and Fashion-MNIST where the package is missing) is downloaded by tfds when
``--download`` allows it, or read from a ``--data-dir`` where it is already prepared.

Preparing needs TensorFlow; reading does not. We prepare as array_record files, which tfds's
random-access data source reads with NumPy and PIL alone, so a directory prepared once (``ddnn
prepare``) can be copied to an accelerator host that has JAX and no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError


@dataclasses.dataclass(frozen=True)
class DatasetPolicy:
    """How we split and augment a tfds dataset."""

    tfds_name: str
    horizontal_flip: bool  # off for digits: a mirrored 3 is not a 3
    crop_padding: int  # random-crop shift in pixels (zero padding on each side)
    validation_size: int | float  # examples held out of the official train split (int: count)


# 28x28 datasets crop with 2 pixels: their objects fill the frame, and the 4 pixels used for
# 32x32 images cost Fashion-MNIST 10 points of validation accuracy after one epoch of 5,000
# images (cloud exit 0.57 with 4, 0.67 with 2, 0.76 without cropping).
DATASETS: dict[str, DatasetPolicy] = {
    "fashion_mnist": DatasetPolicy("fashion_mnist", True, crop_padding=2, validation_size=0.1),
    "mnist": DatasetPolicy("mnist", False, crop_padding=2, validation_size=0.1),
    "cifar10": DatasetPolicy("cifar10", True, crop_padding=4, validation_size=5000),
    "cifar100": DatasetPolicy("cifar100", True, crop_padding=4, validation_size=5000),
    "svhn_cropped": DatasetPolicy("svhn_cropped", False, crop_padding=4, validation_size=0.1),
}

# What we prepare datasets as: tfds reads array_record files through its random-access data
# source without TensorFlow (which only preparing needs).
PREPARED_FORMAT = "array_record"

# Where Debian's dataset-fashion-mnist puts the IDX files; overridable for other layouts.
FASHION_MNIST_SOURCE_ENV = "DDNN_FASHION_MNIST_SOURCE"
FASHION_MNIST_DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
# SHA-256 of the *decompressed* original Fashion-MNIST IDX files.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_HOW_TO_GET = (
    "install its files with 'apt-get install -y dataset-fashion-mnist' "
    f"(or set {FASHION_MNIST_SOURCE_ENV} to a folder holding the four IDX .gz files)"
)


@dataclasses.dataclass(frozen=True)
class Split:
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


def check_dataset_name(name: str) -> DatasetPolicy:
    """The policy of a supported dataset, or a UsageError listing the supported ones."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    split_seed: int = 0,
    limit_train: int | None = None,
    download: bool = False,
) -> DataSplits:
    """Loads a dataset into memory, preparing it first if needed.

    Args:
      name: one of ``DATASETS``.
      data_dir: tfds data directory (tfds's default when None).
      split_seed: seeds the train/validation split of the official train split.
      limit_train: keep only the first N training examples (after the split); validation and
        test stay whole.
      download: let tfds download the dataset if it is not prepared (needs network).

    Returns:
      The train, validation and (official) test splits and their normalisation statistics.
    """
    policy = check_dataset_name(name)
    builder = _prepared_builder(policy.tfds_name, data_dir, download)
    official_train = _read_split(builder, "train")
    test = _read_split(builder, "test")
    train, val = split_train_validation(official_train, policy.validation_size, split_seed)
    if limit_train is not None:
        train = Split(train.images[:limit_train], train.labels[:limit_train])
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """Images read from a folder, in sorted path order."""

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray | None  # [N] int32 when the images sit in class folders 0 .. C-1
    names: tuple[str, ...]  # each image's path relative to the folder


def read_image_folder(folder: Path, image_shape: tuple[int, ...], num_classes: int) -> ImageFolder:
    """Reads every image under ``folder``: all directly in it (no labels), or all in class
    folders named 0 .. num_classes-1 (labelled). Each must have the run's height and width; it
    is converted to the run's channels (grey or RGB) but never resized.

    Raises:
      UsageError: no images, a mix of both layouts, another class name or image size, or a
        file that does not decode.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UsageError(f"--images {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    depths = {len(p.relative_to(folder).parts) for p in paths}
    if depths not in ({1}, {2}):
        raise UsageError(
            f"--images {folder} mixes layouts: put every image directly in it, or every image in a "
            f"class folder 0 .. {num_classes - 1}"
        )
    labels = None
    if depths == {2}:
        classes = {p.parent.name for p in paths}
        valid = {str(c) for c in range(num_classes)}
        if not classes <= valid:
            stray = sorted(classes - valid)[0]
            raise UsageError(
                f"--images {folder}: class folder '{stray}' is not one of 0 .. {num_classes - 1}"
            )
        labels = np.asarray([int(p.parent.name) for p in paths], np.int32)
    height, width, channels = image_shape
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(paths), height, width, channels), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(mode))
        except (OSError, UnidentifiedImageError, ValueError):
            raise UsageError(f"{path} is not an image that decodes: remove or replace it") from None
        if pixels.shape[:2] != (height, width):
            raise UsageError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, the run's images are "
                f"{width}x{height}: resize it first"
            )
        images[i] = pixels.reshape(height, width, channels)
    return ImageFolder(images, labels, tuple(str(p.relative_to(folder)) for p in paths))


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


def channel_statistics(x: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``x * scale`` per entry of the last axis (a channel of NHWC images, a
    feature of a router's inputs), accumulated in float64; the std is floored at 1e-6 so that
    a constant input standardises to zeros."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64) * scale
    std = x.std(axis=axes, dtype=np.float64) * scale
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


# Decoded splits by (prepared data directory, split), oldest first: ``ddnn run`` loads the dataset
# for every stage and every short run of the local-weight study, ~5 s each for Fashion-MNIST on
# a 2-core CPU. The arrays are read-only, so no caller can change what the next one gets.
_DECODED: dict[tuple[str, str], Split] = {}
_DECODED_MAX = 4


def _read_split(builder, split: str) -> Split:
    """One split as read-only arrays, decoded once per process."""
    key = (str(builder.data_dir), split)
    if key not in _DECODED:
        if len(_DECODED) >= _DECODED_MAX:
            del _DECODED[next(iter(_DECODED))]
        _DECODED[key] = _decode_split(builder, split)
    return _DECODED[key]


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
        _require_tensorflow(
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


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _require_tensorflow(why: str, verbose: bool = False) -> None:
    """Imports TensorFlow (only preparation needs it), or raises ``why``. Its native libraries
    print log lines straight to file descriptor 2 as they load, which no Python setting
    reaches: they are sent to /dev/null during the import unless ``verbose``."""
    if not _tensorflow_available():
        raise UsageError(why)
    if "tensorflow" in sys.modules or verbose:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


PREPARE_NEEDS_TENSORFLOW = (
    "preparing a dataset needs TensorFlow, which this environment lacks: install the 'prepare' "
    "extra (pip install 'ddnn-jax[prepare]'), or prepare it on another machine with "
    "'ddnn prepare' and pass the copied directory as --data-dir"
)


def _prepared_builder(tfds_name: str, data_dir: str | None, download: bool, verbose: bool = False):
    """A tfds builder whose data is on disk: prepared now (as array_record files) if it was not."""
    import tensorflow_datasets as tfds

    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir} is a file: give the tfds data directory")
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    offline = tfds_name == "fashion_mnist" and _fashion_mnist_source_files_present()
    how_to = (
        FASHION_MNIST_HOW_TO_GET
        if tfds_name == "fashion_mnist"
        else ("pass --data-dir pointing to a tfds directory where it is prepared")
    )
    if not offline and not download:
        raise UsageError(
            f"dataset '{tfds_name}' is not prepared in {builder.data_dir}: rerun with --download "
            f"on a machine with network access, or {how_to}"
        )
    _require_tensorflow(PREPARE_NEEDS_TENSORFLOW, verbose)
    if offline:
        _prepare_fashion_mnist_offline(data_dir)
        return tfds.builder(tfds_name, data_dir=data_dir)
    _check_network(tfds_name, how_to)
    try:
        builder.download_and_prepare(file_format=PREPARED_FORMAT)
    except Exception as err:  # tfds raises many kinds: network, checksum, missing manual files
        raise UsageError(
            f"dataset '{tfds_name}' is not prepared in {builder.data_dir} and tfds could not "
            f"download it ({type(err).__name__}): check the network, or {how_to}"
        ) from None
    return builder


NETWORK_PROBE = ("storage.googleapis.com", 443)  # where tfds fetches prepared datasets first
NETWORK_TIMEOUT_S = 10.0


def _check_network(tfds_name: str, how_to: str) -> None:
    """Fails within seconds when there is no network, instead of after tfds's minutes of
    retries; behind an HTTPS proxy (as the standard library finds it) tfds is left to find its way."""
    if urllib.request.getproxies().get("https"):
        return
    try:
        socket.create_connection(NETWORK_PROBE, timeout=NETWORK_TIMEOUT_S).close()
    except OSError as err:
        raise UsageError(
            f"cannot download '{tfds_name}': no network ({NETWORK_PROBE[0]} unreachable: "
            f"{err.strerror or type(err).__name__}); {how_to}"
        ) from None


def prepare_dataset(
    name: str, *, data_dir: str | None = None, download: bool = False, verbose: bool = False
) -> Path:
    """Prepares a dataset for reading without TensorFlow; returns its tfds directory.
    ``verbose`` lets TensorFlow's native log lines through."""
    builder = _prepared_builder(check_dataset_name(name).tfds_name, data_dir, download, verbose)
    return Path(str(builder.data_dir))


def _fashion_mnist_source() -> Path:
    return Path(os.environ.get(FASHION_MNIST_SOURCE_ENV, FASHION_MNIST_DEFAULT_SOURCE))


def _fashion_mnist_source_files_present() -> bool:
    return all((_fashion_mnist_source() / f"{f}.gz").is_file() for f in FASHION_MNIST_SHA256)


def _prepare_fashion_mnist_offline(data_dir: str | None) -> None:
    """Prepares tfds's fashion_mnist from local IDX .gz files whose contents we verify."""
    import tensorflow_datasets as tfds

    source = _fashion_mnist_source()
    with tempfile.TemporaryDirectory(prefix="ddnn-fashion-mnist-") as tmp:
        workdir = Path(tmp)
        for stem, expected in FASHION_MNIST_SHA256.items():
            target = workdir / stem
            with gzip.open(source / f"{stem}.gz", "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            if digest != expected:
                raise UsageError(
                    f"{source / (stem + '.gz')} does not hold the original Fashion-MNIST data "
                    f"(SHA-256 {digest[:12]}… of its contents, expected {expected[:12]}…): "
                    "reinstall dataset-fashion-mnist or point "
                    f"{FASHION_MNIST_SOURCE_ENV} at the original files"
                )
        base = tfds.builder_cls("fashion_mnist")

        class OfflineFashionMNIST(base, skip_registration=True):  # type: ignore[misc, valid-type, call-arg]
            name = "fashion_mnist"

            def _split_generators(self, dl_manager):
                del dl_manager  # nothing to download
                paths = {key: str(workdir / key) for key in FASHION_MNIST_SHA256}
                return {
                    "train": self._generate_examples(
                        num_examples=60000,
                        data_path=paths["train-images-idx3-ubyte"],
                        label_path=paths["train-labels-idx1-ubyte"],
                    ),
                    "test": self._generate_examples(
                        num_examples=10000,
                        data_path=paths["t10k-images-idx3-ubyte"],
                        label_path=paths["t10k-labels-idx1-ubyte"],
                    ),
                }

        OfflineFashionMNIST(data_dir=data_dir).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            file_format=PREPARED_FORMAT,
        )


# ---------------------------------------------------------------------------------------------
# Array code, run on device inside jitted functions.


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(images: jax.Array, rng: jax.Array, *, horizontal_flip: bool, pad: int) -> jax.Array:
    """Random crop of the zero-padded raw NHWC batch, then an optional random horizontal flip.

    Runs before ``normalize``: padding is black pixels, as torchvision's RandomCrop pads.
    """
    n, h, w, _ = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    images = jax.vmap(crop)(padded, offsets)
    if horizontal_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1, :], images)
    return images
