import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ddnn_jax.common.errors import UsageError
from ddnn_jax.data import (
    Split,
    augment,
    channel_statistics,
    load_dataset,
    normalize,
    prepare,
    split_train_validation,
)


def test_pipeline_on_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_check_network", lambda *_: None)  # mock data needs none
    with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_dataset("mnist", data_dir=str(tmp_path), split_seed=0, download=True)
        again = load_dataset("mnist", data_dir=str(tmp_path), split_seed=0, download=True)
        limited = load_dataset("mnist", data_dir=str(tmp_path), split_seed=0, limit_train=20, download=True)
        evaluated = load_dataset("mnist", data_dir=str(tmp_path), split_seed=0, limit_eval=4, download=True)
    assert data.train.images.shape == (54, 28, 28, 1) and data.train.images.dtype == np.uint8
    assert len(data.val) == 6 and len(data.test) == 60
    assert data.num_classes == 10 and not data.horizontal_flip and data.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(data.train.labels, again.train.labels)
    # train and validation partition the official split: no image in both, none lost
    rows = lambda split: {image.tobytes() for image in split.images}
    assert not rows(data.train) & rows(data.val) and len(rows(data.train) | rows(data.val)) == 60
    np.testing.assert_array_equal(limited.train.images, data.train.images[:20])
    np.testing.assert_array_equal(limited.val.images, data.val.images)
    np.testing.assert_array_equal(evaluated.val.images, data.val.images[:4])
    np.testing.assert_array_equal(evaluated.test.labels, data.test.labels[:4])
    np.testing.assert_array_equal(evaluated.train.images, data.train.images)
    np.testing.assert_allclose(limited.mean, data.train.images[:20].mean() / 255, rtol=1e-5)


def test_a_decoded_split_is_kept_beside_its_files_and_decoded_again_when_they_change(tmp_path):
    from ddnn_jax.data import datasets

    prepared = tmp_path / "mnist-train.array_record-00000-of-00001"
    prepared.write_bytes(b"first preparation")
    calls = []
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8), np.arange(5, dtype=np.int32))
    decode = lambda: calls.append(1) or split
    first = datasets._cached_split(tmp_path, "train", decode)
    again = datasets._cached_split(tmp_path, "train", decode)
    assert len(calls) == 1  # the second read came from the decoded copy
    np.testing.assert_array_equal(again.images, split.images)
    np.testing.assert_array_equal(again.labels, split.labels)
    assert first is split and not again.images.flags.writeable
    prepared.write_bytes(b"prepared again, other contents")
    datasets._cached_split(tmp_path, "train", decode)
    assert len(calls) == 2
    copies = sorted(p.name for p in tmp_path.iterdir() if p.name != prepared.name)
    assert len(copies) == 1 and copies[0].startswith("ddnn-decoded-train-")  # the stale one replaced
    (tmp_path / copies[0]).write_bytes(b"damaged")
    assert datasets._cached_split(tmp_path, "train", decode) is split and len(calls) == 3


def test_a_full_data_directory_costs_the_decoding_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    from ddnn_jax.data import datasets

    (tmp_path / "mnist-test.array_record-00000-of-00001").write_bytes(b"files")

    def full_disk(file, **arrays):
        file.write(b"half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.np, "savez", full_disk)
    split = Split(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(2, np.int32))
    assert datasets._cached_split(tmp_path, "test", lambda: split) is split
    assert [p.name for p in tmp_path.iterdir()] == ["mnist-test.array_record-00000-of-00001"]


def test_validation_split_is_a_deterministic_partition():
    split = Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100, dtype=np.int32))
    train, val = split_train_validation(split, 0.1, seed=7)
    train_again, _ = split_train_validation(split, 0.1, seed=7)
    other, _ = split_train_validation(split, 0.1, seed=8)
    assert len(train) == 90 and len(val) == 10
    assert sorted(np.concatenate([train.labels, val.labels])) == list(range(100))
    np.testing.assert_array_equal(train.labels, train_again.labels)
    assert not np.array_equal(train.labels, other.labels)
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)  # images follow labels
    assert len(split_train_validation(split, 30, seed=0)[1]) == 30  # an int is a count


def test_channel_statistics_and_normalize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_statistics(images, 1 / 255)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0) / 255, rtol=1e-6)
    normalized = np.asarray(normalize(jnp.asarray(images), mean, std))
    np.testing.assert_allclose(normalized.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normalized.reshape(-1, 3).std(0), 1, rtol=1e-4)


def test_augment_crops_with_black_padding_and_flips():
    images = jnp.arange(2 * 6 * 6, dtype=jnp.uint8).reshape(2, 6, 6, 1) + 1
    key = jax.random.key(0)
    np.testing.assert_array_equal(augment(images, key, horizontal_flip=False, pad=0), images)
    shifted = augment(images, key, horizontal_flip=False, pad=2)
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    flipped = jax.jit(lambda x, k: augment(x, k, horizontal_flip=True, pad=0))
    outputs = [np.asarray(flipped(images, jax.random.key(i))) for i in range(20)]
    for out in outputs:
        for original, result in zip(np.asarray(images), out, strict=False):
            assert np.array_equal(result, original) or np.array_equal(result, original[:, ::-1])
    assert any(not np.array_equal(out, images) for out in outputs)
    # every crop is a window of the zero-padded image
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for original, result in zip(padded, np.asarray(shifted), strict=False):
        windows = [original[i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(result, w) for w in windows)


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'.*fashion_mnist"):
        load_dataset("imagenet")


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DDNN_FASHION_MNIST_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "tfds"))


def test_corrupt_fashion_mnist_file_is_refused(tmp_path, monkeypatch):
    import gzip

    source = tmp_path / "src"
    source.mkdir()
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (source / f"{stem}.gz").write_bytes(gzip.compress(b"not the data"))
    monkeypatch.setenv("DDNN_FASHION_MNIST_SOURCE", str(source))
    with pytest.raises(UsageError, match="does not hold the original Fashion-MNIST"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds" / "fashion_mnist").exists()


def test_unprepared_dataset_without_download_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="not prepared in .*--download.*--data-dir"):
        load_dataset("cifar10", data_dir=str(tmp_path))


# Reads a prepared directory in an interpreter where TensorFlow cannot be imported; prints the
# SHA-256 of every split's images and labels.
WITHOUT_TENSORFLOW = r"""
import hashlib, importlib.util, json, sys
assert importlib.util.find_spec("tensorflow") is None
from ddnn_jax.data import load_dataset
data = load_dataset("fashion_mnist", data_dir=sys.argv[1])
assert "tensorflow" not in sys.modules
print(json.dumps({name: hashlib.sha256(getattr(data, name).images.tobytes()
                                       + getattr(data, name).labels.tobytes()).hexdigest()
                  for name in ("train", "val", "test")}))
"""


@pytest.mark.slow
def test_a_prepared_directory_is_read_without_tensorflow(tmp_path, capsys, fashion_mnist_ready):
    import hashlib
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ddnn_jax.cli import main

    # the session's tfds directory, which fashion_mnist_ready prepared through the same code
    data_dir = Path(os.environ["TFDS_DATA_DIR"])
    assert main(["prepare", "--dataset", "fashion_mnist", "--data-dir", str(data_dir)]) == 0
    assert "(train 54000, val 6000, test 10000)" in capsys.readouterr().out
    prepared = data_dir / "fashion_mnist" / "3.0.1"
    assert any(".array_record-" in p.name for p in prepared.iterdir())
    # every installed package but TensorFlow and its own companions
    site = tmp_path / "site"
    site.mkdir()
    hidden = ("tensorflow-", "tensorflow_cpu", "tensorflow_io", "tf_keras", "keras", "tensorboard")
    for entry in Path(np.__file__).parents[1].iterdir():
        if entry.name != "tensorflow" and not entry.name.startswith(hidden):
            (site / entry.name).symlink_to(entry)
    repo = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", WITHOUT_TENSORFLOW, str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    digests = json.loads(result.stdout.strip().splitlines()[-1])
    here = load_dataset("fashion_mnist")  # the fixture's own preparation, read in this process
    for name in ("train", "val", "test"):
        split = getattr(here, name)
        assert digests[name] == hashlib.sha256(split.images.tobytes() + split.labels.tobytes()).hexdigest()


def _write_png(path, pixels):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_an_image_folder_is_read_in_path_order_with_labels_from_class_folders(tmp_path):
    from ddnn_jax.data import read_image_folder

    rng = np.random.default_rng(0)
    grey = {f"{c}/{i}.png": rng.integers(0, 256, (28, 28), np.uint8) for c in (0, 3) for i in (0, 1)}
    for name, pixels in grey.items():
        _write_png(tmp_path / "labelled" / name, pixels)
    folder = read_image_folder(tmp_path / "labelled", (28, 28, 1), 10)
    assert folder.names == tuple(sorted(grey)) and folder.labels.tolist() == [0, 0, 3, 3]
    np.testing.assert_array_equal(folder.images[..., 0], np.stack([grey[n] for n in sorted(grey)]))
    colour = rng.integers(0, 256, (32, 32, 3), np.uint8)
    _write_png(tmp_path / "flat" / "a.png", colour)
    rgb = read_image_folder(tmp_path / "flat", (32, 32, 3), 10)
    assert rgb.labels is None and rgb.images.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(rgb.images[0], colour)
    assert read_image_folder(tmp_path / "flat", (32, 32, 1), 10).images.shape == (1, 32, 32, 1)  # to grey


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "holds no image"),
        ({"a.png": (28, 28), "0/b.png": (28, 28)}, "mixes layouts"),
        ({"12/a.png": (28, 28)}, "folder '12' is not one of 0 .. 9"),
        ({"a.png": (30, 28)}, "a.png is 28x30 pixels, the run's images are 28x28: resize it first"),
        ({"a.png": None}, "a.png is not an image that decodes"),
    ],
)
def test_a_bad_image_folder_is_refused_in_one_line(tmp_path, files, message):
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.data import read_image_folder

    tmp_path.joinpath("images").mkdir()
    for name, shape in files.items():
        path = tmp_path / "images" / name
        if shape is None:
            path.write_bytes(b"not a png")
        else:
            _write_png(path, np.zeros(shape, np.uint8))
    with pytest.raises(UsageError, match=message):
        read_image_folder(tmp_path / "images", (28, 28, 1), 10)
