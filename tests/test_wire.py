"""The wire format between edge and cloud: exact fp32, bounded fp16/int8 error, sizes, and a
one-line refusal of every malformed body."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddnn_jax.deploy import wire

SHAPE = (14, 14, 32)  # Fashion-MNIST's z


def _features(n=3, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    # channels of very different ranges, mostly non-negative as after LeakyReLU
    scale = np.geomspace(0.05, 20.0, shape[-1]).astype(np.float32)
    return np.abs(rng.normal(size=(n, *shape))).astype(np.float32) * scale - 0.01 * scale


def test_fp32_is_exact_and_the_sizes_are_as_documented():
    z = _features()
    body = wire.encode_features(z, "fp32")
    assert len(body) == wire.REQUEST_HEADER_BYTES + 3 * wire.payload_bytes("fp32", SHAPE) == 20 + 3 * 25088
    decoded = wire.decode_features(body, SHAPE)
    assert decoded.wire == "fp32" and decoded.features.dtype == np.float32
    np.testing.assert_array_equal(decoded.features, z)
    assert wire.payload_bytes("fp16", SHAPE) == 12544
    assert wire.payload_bytes("int8", SHAPE) == 14 * 14 * 32 + 32 * 8
    # the bound: int8 at most 30 % of fp32 on the wire, even with HTTP headers on top
    assert (wire.payload_bytes("int8", SHAPE) + 20 + 200) / (wire.payload_bytes("fp32", SHAPE) + 20) < 0.30


def test_fp16_and_int8_errors_are_bounded():
    z = _features()
    fp16 = wire.decode_features(wire.encode_features(z, "fp16"), SHAPE).features
    np.testing.assert_allclose(fp16, z, rtol=2**-11, atol=6e-8)
    int8 = wire.decode_features(wire.encode_features(z, "int8"), SHAPE).features
    step = (z.max(axis=(1, 2)) - z.min(axis=(1, 2))) / 255.0  # per sample and channel
    error = np.abs(int8 - z).max(axis=(1, 2))
    assert np.all(error <= step * 0.5 + 1e-6 * np.abs(z).max(axis=(1, 2)))
    assert not np.array_equal(int8, z)


def test_int8_keeps_a_constant_channel_and_each_sample_its_own_range():
    z = _features(n=2)
    z[0, :, :, 5] = 0.25
    z[1] *= 1000.0  # one outlier sample does not coarsen the other
    out = wire.decode_features(wire.encode_features(z, "int8"), SHAPE).features
    np.testing.assert_array_equal(out[0, :, :, 5], 0.25)
    alone = wire.decode_features(wire.encode_features(z[:1], "int8"), SHAPE).features
    np.testing.assert_array_equal(out[0], alone[0])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 5),
    c=st.integers(1, 6),
    wire_name=st.sampled_from(wire.WIRES),
    seed=st.integers(0, 1000),
)
def test_every_wire_round_trips_any_shape(n, h, c, wire_name, seed):
    z = np.random.default_rng(seed).normal(size=(n, h, h + 1, c)).astype(np.float32)
    body = wire.encode_features(z, wire_name)
    assert len(body) == wire.REQUEST_HEADER_BYTES + n * wire.payload_bytes(wire_name, (h, h + 1, c))
    out = wire.decode_features(body, (h, h + 1, c)).features
    assert out.shape == z.shape and np.all(np.isfinite(out))
    tolerance = {"fp32": 0.0, "fp16": 1e-2, "int8": 0.5 * np.ptp(z) / 255 * 1.001 + 1e-6}[wire_name]
    assert np.abs(out - z).max() <= tolerance + 1e-7


def _header(n=1, shape=SHAPE, code=0, magic=b"DDNZ", version=wire.VERSION):
    return struct.pack("<4sBBHIHHHH", magic, version, code, 0, n, *shape, 0)


@pytest.mark.parametrize(
    "body, refused, reason",
    [
        (b"", False, "truncated header: 0 bytes"),
        (b"DDNZ\x01", False, "truncated header: 5 bytes"),
        (b"GET / HTTP/1.1\r\n\r\n" + bytes(20), False, "not a ddnn feature request"),
        (_header(version=9) + bytes(25088), True, "version 9 is not served"),
        (_header(code=7) + bytes(25088), True, "unknown wire code 7"),
        (
            _header(shape=(14, 14, 16)) + bytes(14 * 14 * 16 * 4),
            True,
            "feature shape 14x14x16 does not match",
        ),
        (_header(n=0), False, "holds no sample"),
        (_header(n=2) + bytes(25088), False, "truncated body: 2 fp32 samples of 14x14x32 take 50196 bytes"),
        (_header(n=1) + bytes(25089), False, "too long body"),
        (_header(n=1) + np.full(14 * 14 * 32, np.nan, np.float32).tobytes(), False, "NaN or infinity"),
    ],
)
def test_a_malformed_body_is_refused_with_one_line(body, refused, reason):
    with pytest.raises(wire.WireError) as err:
        wire.decode_features(body, SHAPE)
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, wire.WireRefused) is refused


def test_logits_round_trip_and_a_wrong_answer_is_refused():
    logits = np.arange(30, dtype=np.float32).reshape(3, 10)
    body = wire.encode_logits(logits)
    np.testing.assert_array_equal(wire.decode_logits(body, 3, 10), logits)
    with pytest.raises(wire.WireError, match="3x10 logits, expected 2x10"):
        wire.decode_logits(body, 2, 10)
    with pytest.raises(wire.WireError, match="truncated answer"):
        wire.decode_logits(body[:5], 3, 10)
    poisoned = logits.copy()
    poisoned[0, 4], poisoned[2, :] = np.nan, np.inf
    with pytest.raises(wire.WireError, match="non-finite logits for 2 of 3 samples"):
        wire.decode_logits(wire.encode_logits(poisoned), 3, 10)


def test_an_unknown_wire_is_refused_on_encoding():
    with pytest.raises(wire.WireError, match="unknown wire 'int4'"):
        wire.encode_features(_features(n=1), "int4")
