"""The wire format between edge and cloud: exact fp32, bounded fp16/int8 error, sizes, and a
one-line refusal of every malformed body."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddnn_jax.core.bottleneck import BITS
from ddnn_jax.deploy import image_wire, wire

SHAPE = (14, 14, 32)  # Fashion-MNIST's z


def _features(n=3, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    # channels of very different ranges, mostly non-negative as after LeakyReLU
    scale = np.geomspace(0.05, 20.0, shape[-1]).astype(np.float32)
    return np.abs(rng.normal(size=(n, *shape))).astype(np.float32) * scale - 0.01 * scale


def test_fp32_is_exact_and_the_sizes_are_as_documented():
    z = _features()
    body = wire.encode(z, "fp32")
    assert len(body) == wire.REQUEST_HEADER_BYTES + 3 * wire.payload_bytes("fp32", SHAPE) == 20 + 3 * 25088
    decoded = wire.decode(body, SHAPE)
    assert decoded.wire == "fp32" and decoded.values.dtype == np.float32
    np.testing.assert_array_equal(decoded.values, z)
    assert wire.payload_bytes("fp16", SHAPE) == 12544
    assert wire.payload_bytes("int8", SHAPE) == 14 * 14 * 32 + 32 * 8
    # the bound: int8 at most 30 % of fp32 on the wire, even with HTTP headers on top
    assert (wire.payload_bytes("int8", SHAPE) + 20 + 200) / (wire.payload_bytes("fp32", SHAPE) + 20) < 0.30


def test_fp16_and_int8_errors_are_bounded():
    z = _features()
    fp16 = wire.decode(wire.encode(z, "fp16"), SHAPE).values
    np.testing.assert_allclose(fp16, z, rtol=2**-11, atol=6e-8)
    int8 = wire.decode(wire.encode(z, "int8"), SHAPE).values
    step = (z.max(axis=(1, 2)) - z.min(axis=(1, 2))) / 255.0  # per sample and channel
    error = np.abs(int8 - z).max(axis=(1, 2))
    assert np.all(error <= step * 0.5 + 1e-6 * np.abs(z).max(axis=(1, 2)))
    assert not np.array_equal(int8, z)


def test_int8_keeps_a_constant_channel_and_each_sample_its_own_range():
    z = _features(n=2)
    z[0, :, :, 5] = 0.25
    z[1] *= 1000.0  # one outlier sample does not coarsen the other
    out = wire.decode(wire.encode(z, "int8"), SHAPE).values
    np.testing.assert_array_equal(out[0, :, :, 5], 0.25)
    alone = wire.decode(wire.encode(z[:1], "int8"), SHAPE).values
    np.testing.assert_array_equal(out[0], alone[0])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 5),
    c=st.integers(1, 6),
    wire_name=st.sampled_from(wire.wires_of(wire.FEATURES)),
    seed=st.integers(0, 1000),
)
def test_every_feature_wire_round_trips_any_shape(n, h, c, wire_name, seed):
    z = np.random.default_rng(seed).normal(size=(n, h, h + 1, c)).astype(np.float32)
    body = wire.encode(z, wire_name)
    assert len(body) == wire.REQUEST_HEADER_BYTES + n * wire.payload_bytes(wire_name, (h, h + 1, c))
    out = wire.decode(body, (h, h + 1, c)).values
    assert out.shape == z.shape and np.all(np.isfinite(out))
    tolerance = {"fp32": 0.0, "fp16": 1e-2, "int8": 0.5 * np.ptp(z) / 255 * 1.001 + 1e-6}[wire_name]
    assert np.abs(out - z).max() <= tolerance + 1e-7


def _header(n=1, shape=SHAPE, code=0, magic=b"DDNZ", version=wire.VERSION, bits=0):
    return struct.pack("<4sBBHIHHHH", magic, version, code, bits, n, *shape, 0)


@pytest.mark.parametrize(
    "body, refused, reason",
    [
        (b"", False, "truncated header: 0 bytes"),
        (b"DDNZ\x01", False, "truncated header: 5 bytes"),
        (b"GET / HTTP/1.1\r\n\r\n" + bytes(20), False, "not a ddnn request"),
        (_header(version=9) + bytes(25088), True, "version 9 is not served"),
        (_header(code=40) + bytes(25088), True, "wire code 40 is not served on this route"),
        (_header(code=5) + bytes(25088), True, "wire code 5 is not served on this route: it reads fp32"),
        (
            _header(shape=(14, 14, 16)) + bytes(14 * 14 * 16 * 4),
            True,
            "features of shape 14x14x16 do not match",
        ),
        (_header(n=0), False, "holds no sample"),
        (_header(n=2) + bytes(25088), False, "truncated body: 2 fp32 samples of 14x14x32 take 50196 bytes"),
        (_header(n=1) + bytes(25089), False, "too long body"),
        (_header(n=1) + np.full(14 * 14 * 32, np.nan, np.float32).tobytes(), False, "NaN or infinity"),
    ],
)
def test_a_malformed_body_is_refused_with_one_line(body, refused, reason):
    with pytest.raises(wire.WireError) as err:
        wire.decode(body, SHAPE)
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
        wire.encode(_features(n=1), "int4")


@pytest.mark.parametrize("channels", [1, 2, 4, 8])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("wire_name", wire.wires_of(wire.CODES))
def test_bottleneck_codes_cross_exactly_for_every_k_and_bit_width(channels, bits, wire_name):
    code_shape = (7, 7, channels)
    rng = np.random.default_rng(channels * bits)
    codes = rng.integers(0, 2**bits, (3, *code_shape)).astype(np.uint8)
    codes[1] = 0  # a redundant sample: DEFLATE wins on it
    body = wire.encode(codes, wire_name, bits)
    decoded = wire.decode(body, code_shape, wire.CODES, bits)
    assert (decoded.wire, decoded.param) == (wire_name, bits)
    np.testing.assert_array_equal(decoded.values, codes)
    packed = -(-7 * 7 * channels * bits // 8)
    if wire_name == "bottleneck":
        assert (
            len(body)
            == wire.REQUEST_HEADER_BYTES + 3 * packed
            == 20 + 3 * wire.payload_bytes(wire_name, code_shape, bits)
        )
    else:  # a length and a flag byte each; never more than that over the packed codes
        assert wire.payload_bytes(wire_name, code_shape, bits) is None
        assert len(body) <= wire.REQUEST_HEADER_BYTES + 3 * (4 + 1 + packed)
        assert len(body) < wire.REQUEST_HEADER_BYTES + 3 * (4 + 1 + packed) - packed / 2
    with pytest.raises(wire.WireRefused, match=f"codes of {bits} bits, this bottleneck's are 3"):
        wire.decode(body, code_shape, wire.CODES, 3)
    with pytest.raises(wire.WireRefused, match="is not served on this route"):
        wire.decode(body, code_shape, wire.FEATURES)


def _zlib_body(sample: bytes, shape=(2, 2, 1)) -> bytes:
    return _header(shape=shape, code=wire.WIRES["bottleneck-zlib"].code, bits=8) + wire.frame([sample])


@pytest.mark.parametrize(
    "sample, reason",
    [
        (b"\x02" + bytes(4), "the first byte of a sample must be 0"),
        (b"\x00" + bytes(3), "3 packed bytes, expected 4"),
        (b"\x01" + b"\xff\xff", "bad DEFLATE stream"),
        # a stream that would inflate far past the 4 bytes of codes is stopped there
        (b"\x01" + __import__("zlib").compress(bytes(10**6), 9, wbits=-15)[:40], "over the 5"),
        (b"\x01" + __import__("zlib").compressobj(9, wbits=-15).compress(bytes(5)), "does not end at 4"),
    ],
)
def test_entropy_coded_codes_that_do_not_decode_are_refused(sample, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(_zlib_body(sample), (2, 2, 1), wire.CODES, 8)


def _images(n=3, shape=(28, 28, 1), seed=0):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(0, 8, (n, *shape)), axis=1)  # some structure to compress
    return np.clip(smooth, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("wire_name", wire.wires_of(wire.IMAGES))
def test_images_cross_in_every_image_wire(shape, wire_name):
    images = _images(shape=shape)
    quality = 90 if wire_name in image_wire.LOSSY else 0
    decoded = wire.decode(wire.encode(images, wire_name, quality), shape, wire.IMAGES).values
    assert decoded.dtype == np.uint8 and decoded.shape == images.shape
    if wire_name in image_wire.LOSSY:  # close, not equal
        assert 0 < np.abs(decoded.astype(int) - images).mean() < 8
    else:
        np.testing.assert_array_equal(decoded, images)


def _image_body(data: bytes, wire_name="png", shape=(28, 28, 1)) -> bytes:
    return _header(shape=shape, code=wire.WIRES[wire_name].code) + wire.frame([data])


@pytest.mark.parametrize(
    "body, reason",
    [
        (_image_body(image_wire.encode_image(_images(1)[0], "jpeg", 75)), "not a PNG image"),
        (_image_body(image_wire.encode_image(_images(1, (27, 28, 1))[0], "png", 0)), "a 28x27 L image"),
        (_image_body(image_wire.encode_image(_images(1, (28, 28, 3))[0], "png", 0)), "28x28 RGB image"),
        (_image_body(image_wire.encode_image(_images(1)[0], "png", 0)[:60]), "an unreadable PNG image"),
        (_image_body(b"\x89PNG" + bytes(3000)), "over the 2592 this wire allows"),
        (_image_body(bytes(10))[:-3], "truncated body"),
    ],
)
def test_an_image_that_is_not_what_the_wire_says_is_refused(body, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(body, (28, 28, 1), wire.IMAGES)
