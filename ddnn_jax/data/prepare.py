"""Preparing a dataset on disk with tfds and TensorFlow, downloaded or (Fashion-MNIST) offline
from Debian's files. It is written as array_record files, which reading needs no TensorFlow for,
so a directory prepared once (``ddnn prepare``) can be copied to a host with JAX alone."""

from __future__ import annotations

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

from ddnn_jax.common.errors import UsageError
from ddnn_jax.data.catalog import check_dataset_name

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

PREPARE_NEEDS_TENSORFLOW = (
    "preparing a dataset needs TensorFlow, which this environment lacks: install the 'prepare' "
    "extra (pip install 'ddnn-jax[prepare]'), or prepare it on another machine with "
    "'ddnn prepare' and pass the copied directory as --data-dir"
)

NETWORK_PROBE = ("storage.googleapis.com", 443)  # where tfds fetches prepared datasets first
NETWORK_TIMEOUT_S = 10.0


def prepare_dataset(
    name: str, *, data_dir: str | None = None, download: bool = False, verbose: bool = False
) -> Path:
    """Prepares a dataset for reading without TensorFlow: ``ddnn prepare``.

    Args:
      name: a dataset of ``DATASETS``.
      data_dir: the tfds data directory (tfds's default when None).
      download: let tfds download it (Fashion-MNIST prepares offline from Debian's files).
      verbose: let TensorFlow's native log lines through.
    Returns:
      The dataset's directory inside ``data_dir``."""
    builder = prepared_builder(check_dataset_name(name).tfds_name, data_dir, download, verbose)
    return Path(str(builder.data_dir))


def prepared_builder(tfds_name: str, data_dir: str | None, download: bool, verbose: bool = False):
    """A tfds builder whose data is on disk: prepared now (as array_record files) if it was not,
    offline for Fashion-MNIST where Debian's files are, else downloaded by tfds if ``download``."""
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
    require_tensorflow(PREPARE_NEEDS_TENSORFLOW, verbose)
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


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def require_tensorflow(why: str, verbose: bool = False) -> None:
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


def _fashion_mnist_source() -> Path:
    return Path(os.environ.get(FASHION_MNIST_SOURCE_ENV, FASHION_MNIST_DEFAULT_SOURCE))


def _fashion_mnist_source_files_present() -> bool:
    return all((_fashion_mnist_source() / f"{f}.gz").is_file() for f in FASHION_MNIST_SHA256)


def _decompress_verified(source: Path, workdir: Path) -> None:
    """Decompresses the four IDX files into ``workdir`` and checks each one's SHA-256."""
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


def _prepare_fashion_mnist_offline(data_dir: str | None) -> None:
    """Prepares tfds's fashion_mnist from local IDX .gz files whose contents we verify.

    Debian's ``dataset-fashion-mnist`` holds the original IDX files re-compressed, so the gzip
    checksums tfds registers do not match. We decompress them, check the SHA-256 of the
    decompressed bytes (which equal the originals'), and hand them to tfds's own Fashion-MNIST
    generator through a builder subclass, never touching tfds's checksum registry.
    """
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory(prefix="ddnn-fashion-mnist-") as tmp:
        workdir = Path(tmp)
        _decompress_verified(_fashion_mnist_source(), workdir)
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
