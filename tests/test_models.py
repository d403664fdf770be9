import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddnn_jax.core.models import DDNN, max_pool_2x2


def _init(shape, num_classes=10):
    model = DDNN(num_classes)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    return model, variables


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "shape, num_classes, z_shape",
    [((32, 32, 3), 10, (16, 16, 32)), ((28, 28, 1), 10, (14, 14, 32)), ((32, 32, 3), 100, (16, 16, 32))],
)
def test_output_shapes_follow_the_input(shape, num_classes, z_shape):
    model, variables = _init(shape, num_classes)
    local_logits, cloud_logits, z = model.apply(variables, jnp.ones((4, *shape)), train=False)
    chex.assert_shape(local_logits, (4, num_classes))
    chex.assert_shape(cloud_logits, (4, num_classes))
    chex.assert_shape(z, (4, *z_shape))
    chex.assert_tree_all_finite((local_logits, cloud_logits, z))


def test_parameter_counts_match_the_spec_architecture_cifar10():
    _, variables = _init((32, 32, 3))
    params = variables["params"]
    assert params["local_classifier"]["fc1"]["kernel"].shape == (8192, 64)
    # conv 3x3x3x32 + bias, BN scale + bias
    assert _count(params["feature_extractor"]) == 896 + 64
    assert _count(params["local_classifier"]) == 8192 * 64 + 64 + 64 * 10 + 10
    cloud = [
        9 * 32 * 64 + 64,
        2 * 64,
        9 * 64 * 128 + 128,
        2 * 128,
        9 * 128 * 256 + 256,
        2 * 256,
        9 * 256 * 256 + 256,
        2 * 256,
        1024 * 256 + 256,
        256 * 64 + 64,
        64 * 10 + 10,
    ]
    assert _count(params["cloud"]) == sum(cloud)
    assert _count(params) == 1_784_468
    assert _count(variables["batch_stats"]) == 2 * (32 + 64 + 128 + 256 + 256)


def test_parameter_count_fashion_mnist():
    _, variables = _init((28, 28, 1))
    # 28 -> 14 (edge) -> 7 -> 3 -> 1 after the cloud's pools: its fc1 sees 256 values.
    assert variables["params"]["cloud"]["fc1"]["kernel"].shape == (256, 256)
    assert _count(variables["params"]) == 1_464_404


def test_initialisation_is_pytorch_fan_in_uniform():
    _, variables = _init((32, 32, 3))
    params = variables["params"]
    for layer, fan_in in [
        (params["feature_extractor"]["conv1"], 27),
        (params["local_classifier"]["fc1"], 8192),
        (params["cloud"]["conv4"], 9 * 256),
    ]:
        bound = 1 / np.sqrt(fan_in)
        for leaf in (layer["kernel"], layer["bias"]):
            assert float(jnp.abs(leaf).max()) <= bound
        # uniform on [-b, b]: std b/sqrt(3); far from Flax's lecun-normal or zero bias
        np.testing.assert_allclose(float(layer["kernel"].std()), bound / np.sqrt(3), rtol=0.1)


def test_edge_runs_without_cloud_parameters():
    model, variables = _init((28, 28, 1))
    edge_only = {
        "params": {k: variables["params"][k] for k in ("feature_extractor", "local_classifier")},
        "batch_stats": {"feature_extractor": variables["batch_stats"]["feature_extractor"]},
    }
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    z, local_logits = model.apply(edge_only, x, method=DDNN.edge)
    full_local, cloud_logits, full_z = model.apply(variables, x)
    np.testing.assert_allclose(local_logits, full_local, rtol=1e-6)
    np.testing.assert_allclose(
        model.apply(
            {
                "params": {"cloud": variables["params"]["cloud"]},
                "batch_stats": {"cloud": variables["batch_stats"]["cloud"]},
            },
            z,
            method=DDNN.cloud_head,
        ),
        cloud_logits,
        rtol=1e-5,
        atol=1e-6,
    )


def test_dropout_and_batch_norm_differ_between_train_and_eval():
    model, variables = _init((28, 28, 1))
    x = jax.random.normal(jax.random.key(2), (8, 28, 28, 1)) * 3 + 1
    eval_a = model.apply(variables, x, train=False)[1]
    eval_b = model.apply(variables, x, train=False)[1]
    np.testing.assert_array_equal(eval_a, eval_b)  # deterministic in evaluation

    def train_apply(seed):
        (_, logits, _), updates = model.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]

    train_a, stats = train_apply(0)
    train_b, _ = train_apply(1)
    assert not np.allclose(train_a, train_b)  # dropout masks differ by key
    assert not np.allclose(train_a, eval_a)
    # running mean moves 10 % of the way to the batch mean (PyTorch momentum 0.1)
    old = variables["batch_stats"]["feature_extractor"]["bn"]["mean"]
    new = stats["feature_extractor"]["bn"]["mean"]
    conv_out = nn.Conv(32, (3, 3), padding="SAME").apply(
        {"params": variables["params"]["feature_extractor"]["conv1"]}, x
    )
    np.testing.assert_allclose(new, 0.9 * old + 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_max_pool_floors_odd_sizes_like_pytorch():
    x = jnp.arange(2 * 7 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 7, 3)
    pooled = max_pool_2x2(x)
    chex.assert_shape(pooled, (2, 3, 3, 3))
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(pooled, expected)


@pytest.mark.parametrize("padding", ["SAME", [(1, 1), (1, 1)], "VALID", [(0, 2), (1, 0)]])
def test_im2col_convolution_equals_xla_convolution(padding):
    from ddnn_jax.core.models import im2col_conv

    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 7, 6, 5))
    w = jax.random.normal(keys[1], (3, 3, 5, 4))
    dims = ("NHWC", "HWIO", "NHWC")

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)

    def ours(x, w):
        return im2col_conv(x, w, (1, 1), padding)

    np.testing.assert_allclose(ours(x, w), xla(x, w), atol=1e-5)
    g = jax.random.normal(keys[2], xla(x, w).shape)
    grads = [jax.grad(lambda x, w, f=f: (f(x, w) * g).sum(), argnums=(0, 1))(x, w) for f in (ours, xla)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), *grads)


def test_bf16_computes_in_bfloat16_and_keeps_float32_parameters_and_outputs():
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    fp32 = DDNN(num_classes=10)
    bf16 = DDNN(num_classes=10, precision="bf16")
    variables = fp32.init(jax.random.key(1), x)
    assert jax.tree.map(lambda a: a.shape, bf16.init(jax.random.key(1), x)) == jax.tree.map(
        lambda a: a.shape, variables
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16.init(jax.random.key(1), x)))
    outputs = bf16.apply(variables, x)
    assert all(o.dtype == jnp.float32 for o in outputs)
    jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, x))(variables))
    assert "bf16" in jaxpr and "bf16" not in str(jax.make_jaxpr(lambda v: fp32.apply(v, x))(variables))
    for low, full in zip(outputs, fp32.apply(variables, x), strict=True):
        np.testing.assert_allclose(low, full, atol=0.05 * float(jnp.abs(full).max()) + 1e-3)
