"""PyTorch parity: ported weights give the same logits, gradients and batch-norm updates both
ways, and ``ddnn import-torch`` / ``export-torch`` round-trip real runs."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ddnn_jax.cli import main  # noqa: E402
from ddnn_jax.core.models import DDNN  # noqa: E402
from ddnn_jax.core.training import joint_loss  # noqa: E402
from ddnn_jax.interop import convert  # noqa: E402
from ddnn_jax.interop.reference import ReferenceDDNN  # noqa: E402

SHAPES = [((32, 32, 3), 10), ((28, 28, 1), 10)]


def _torch_model(shape, num_classes, seed=0, dropout_rate=0.2):
    torch.manual_seed(seed)
    model = ReferenceDDNN(shape, num_classes, dropout_rate=dropout_rate)
    with torch.no_grad():  # non-trivial batch-norm state, so that a mix-up of stats shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def _state_dicts(model):
    return {
        part: {k: v.numpy().copy() for k, v in getattr(model, part).state_dict().items()}
        for part in convert.PARTS
    }


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("shape, num_classes", SHAPES)
def test_torch_weights_give_the_same_logits_in_flax(shape, num_classes):
    model = _torch_model(shape, num_classes).eval()
    x = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
    with torch.no_grad():
        want_local, want_cloud = (t.numpy() for t in model(_nchw(x)))
    variables = convert.torch_to_flax(_state_dicts(model))
    local, cloud, _ = DDNN(num_classes).apply(variables, jnp.asarray(x), train=False)
    np.testing.assert_allclose(local, want_local, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cloud, want_cloud, atol=1e-5, rtol=1e-5)
    assert not np.allclose(want_local, 0, atol=1e-2)  # the comparison is not vacuous


@pytest.mark.parametrize("shape, num_classes", SHAPES)
def test_flax_weights_give_the_same_logits_in_torch(shape, num_classes):
    flax_model = DDNN(num_classes)
    variables = flax_model.init(jax.random.key(1), jnp.zeros((1, *shape)), train=False)
    keys = iter(jax.random.split(jax.random.key(2), 64))
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda v: v + jax.random.uniform(next(keys), v.shape, minval=0.1, maxval=0.9),
            variables["batch_stats"],
        ),
    }
    x = np.random.default_rng(1).normal(size=(16, *shape)).astype(np.float32)
    local, cloud, _ = flax_model.apply(variables, jnp.asarray(x), train=False)
    model = ReferenceDDNN(shape, num_classes).eval()
    for part, arrays in convert.flax_to_torch(variables, steps=7).items():
        getattr(model, part).load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True
        )
    with torch.no_grad():
        want_local, want_cloud = (t.numpy() for t in model(_nchw(x)))
    np.testing.assert_allclose(local, want_local, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cloud, want_cloud, atol=1e-5, rtol=1e-5)
    assert int(model.cloud.bn1.num_batches_tracked) == 7


def test_round_trip_is_exact():
    model = _torch_model((28, 28, 1), 10)
    original = _state_dicts(model)
    back = convert.flax_to_torch(
        convert.torch_to_flax(original), steps=int(model.cloud.bn1.num_batches_tracked)
    )
    for part in convert.PARTS:
        assert back[part].keys() == original[part].keys()
        for key in original[part]:
            np.testing.assert_array_equal(back[part][key], original[part][key], err_msg=key)


def test_training_step_matches_torch_gradients_and_batch_norm_updates():
    """Train mode without dropout: same joint loss, same gradients, and running statistics
    moved with PyTorch's momentum 0.1 (its running variance is unbiased, Flax's biased: the
    difference is a factor n/(n-1) with n = 8*16*16 values per channel at least)."""
    shape, num_classes, w = (32, 32, 3), 10, 0.3
    model = _torch_model(shape, num_classes, dropout_rate=0.0).train()
    variables = convert.torch_to_flax(_state_dicts(model))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, *shape)).astype(np.float32)
    labels = rng.integers(0, num_classes, 8)

    local, cloud = model(_nchw(x))
    ce = torch.nn.functional.cross_entropy
    loss = w * ce(local, torch.from_numpy(labels)) + (1 - w) * ce(cloud, torch.from_numpy(labels))
    loss.backward()
    want_grads = convert.torch_to_flax(
        {
            part: {k: p.grad.numpy() for k, p in getattr(model, part).named_parameters()}
            for part in convert.PARTS
        }
    )["params"]
    want_stats = convert.torch_to_flax(_state_dicts(model))["batch_stats"]

    flax_model = DDNN(num_classes, dropout_rate=0.0)

    def loss_fn(params):
        (lo, cl, _), updates = flax_model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            jnp.asarray(x),
            train=True,
            mutable=["batch_stats"],
        )
        return joint_loss(lo, cl, jnp.asarray(labels), w), updates["batch_stats"]

    (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-3), grads, want_grads)
    means = lambda tree: {p: {k: v["mean"] for k, v in layers.items()} for p, layers in tree.items()}
    variances = lambda tree: {p: {k: v["var"] for k, v in layers.items()} for p, layers in tree.items()}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), means(stats), means(want_stats))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3), variances(stats), variances(want_stats)
    )


def test_pytorch_default_initialisation_bounds_and_batch_norm_settings():
    model = ReferenceDDNN((32, 32, 3), 10)
    flax_vars = DDNN(10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    flat = convert.flax_to_torch(flax_vars)
    for part in convert.PARTS:
        for name, p in getattr(model, part).named_parameters():
            layer = getattr(getattr(model, part), name.split(".")[0])
            if isinstance(layer, torch.nn.BatchNorm2d):
                continue
            fan_in = layer.weight[0].numel()
            bound = 1 / np.sqrt(fan_in)
            ours = flat[part][name]
            for values in (p.detach().numpy(), ours):
                assert np.abs(values).max() <= bound
                if values.size >= 1000:  # uniform over the whole interval, not a narrower one
                    assert np.abs(values).max() > 0.95 * bound
                    assert abs(values.std() - bound / np.sqrt(3)) < 0.05 * bound
    bn = model.cloud.bn1
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)
    from ddnn_jax.core.models import BN_EPSILON, BN_MOMENTUM

    assert pytest.approx((bn.momentum, bn.eps)) == (1 - BN_MOMENTUM, BN_EPSILON)


def _save_parts(model, directory):
    paths = {}
    for part in convert.PARTS:
        paths[part] = directory / f"{part}.pth"
        torch.save(getattr(model, part).state_dict(), paths[part])
    return paths


def _import_args(paths, out, *extra):
    return [
        "import-torch",
        "--feature-extractor",
        str(paths["feature_extractor"]),
        "--local-classifier",
        str(paths["local_classifier"]),
        "--cloud",
        str(paths["cloud"]),
        "--dataset",
        "fashion_mnist",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_import_collect_export_on_fashion_mnist(tmp_path, capsys, fashion_mnist_ready):
    from ddnn_jax.data import load_dataset

    model = _torch_model((28, 28, 1), 10, seed=3).eval()
    paths = _save_parts(model, tmp_path)
    run = tmp_path / "run"
    mean, std = 0.25, 0.4
    limits = ["--limit-train", "256", "--limit-eval", "1000"]
    assert main(_import_args(paths, run, "--mean", str(mean), "--std", str(std), *limits)) == 0
    assert main(["collect", "--run", str(run)]) == 0
    assert len(np.load(run / "outputs" / "train.npz")["labels"]) == 256

    test = load_dataset("fashion_mnist", limit_eval=1000).test
    assert json.loads((run / "config.json").read_text())["split_sizes"]["test"] == len(test.labels) == 1000
    x = (test.images.astype(np.float32) / 255 - mean) / std
    with torch.no_grad():
        want = [t.numpy() for t in model(_nchw(x))]
    outputs = np.load(run / "outputs" / "test.npz")
    for got, expected in zip((outputs["local_logits"], outputs["cloud_logits"]), want, strict=False):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))

    exported = tmp_path / "exported"
    assert main(["export-torch", "--run", str(run), "--out", str(exported)]) == 0
    for part in convert.PARTS:
        again = torch.load(exported / convert.EXPORT_FILES[part], weights_only=True)
        for key, value in getattr(model, part).state_dict().items():
            if not key.endswith("num_batches_tracked"):
                torch.testing.assert_close(again[key], value, rtol=0, atol=0)
    # an --out that cannot hold the files: one line, exit 2, before anything is written
    (tmp_path / "a-file").write_text("x")
    for out, message in (
        (tmp_path / "a-file" / "w", "a-file is a file"),
        (Path("/proc/ddnn"), "cannot write"),
    ):
        capsys.readouterr()
        assert main(["export-torch", "--run", str(run), "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], error
    # An imported run is not trainable further: one line, exit 2, nothing changed.
    assert main(["train", "--out", str(run), "--epochs", "1"]) == 2


def test_import_rejects_weights_of_another_image_shape(tmp_path, capsys, fashion_mnist_ready):
    paths = _save_parts(_torch_model((32, 32, 3), 10), tmp_path)
    out = tmp_path / "run"
    assert main(_import_args(paths, out)) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "has shape" in error and "28x28x1" in error
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_import_rejects_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    paths = _save_parts(_torch_model((28, 28, 1), 10), tmp_path)
    paths["cloud"].write_bytes(b"not a checkpoint")
    assert main(_import_args(paths, tmp_path / "run")) == 2
    assert "is not a PyTorch state dict" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda sd: sd.__setitem__("conv1.weight", 3), "entry 'conv1.weight' is not a named tensor"),
        (lambda sd: sd.__setitem__(7, torch.zeros(1)), "entry 7 is not a named tensor"),
        (lambda sd: sd.__setitem__("fc.weight", torch.zeros(2, 2)), "unexpected entry 'fc.weight'"),
        (lambda sd: sd.__setitem__("conv1.weight", torch.tensor(1.0)), "has 0 dimensions, 4 expected"),
        (lambda sd: sd["conv1.weight"].view(-1).__setitem__(0, float("nan")), "holds NaN or infinite"),
        (
            lambda sd: sd.__setitem__("conv1.weight", sd["conv1.weight"].round().to(torch.int64)),
            "'conv1.weight' holds int64 values, not floating-point ones",
        ),
    ],
)
def test_import_refuses_entries_that_are_not_reference_weights(tmp_path, capsys, change, fragment):
    model = _torch_model((28, 28, 1), 10)
    paths = _save_parts(model, tmp_path)
    state = torch.load(paths["feature_extractor"], weights_only=True)
    change(state)
    torch.save(state, paths["feature_extractor"])
    assert main(_import_args(paths, tmp_path / "run")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and fragment in error[0], error
    assert not (tmp_path / "run").exists()
