"""What crosses the network between the edge and the cloud: an offloaded batch, and cloud logits.

A request body is a 20-byte header followed by the payload:

    magic b"DDNZ" | version u8 | wire u8 | param u16 | n u32 | height u16 | width u16 |
    channels u16 | reserved u16

all little-endian, then the n samples [n, height, width, channels] in one of the wires of
``WIRES``. A wire carries one kind of thing, and each kind has its route on the server:

* edge features z (``FEATURES``, ``CLOUD_PATH``), float32 values:
  - ``fp32``: as they are (the cloud sees exactly what the edge computed);
  - ``fp16``: rounded to float16 (half the bytes);
  - ``int8``: 8-bit codes with an affine scale per sample and channel. For each sample and
    channel, lo = min and hi = max over the map; code = round((z - lo) / s) with
    s = (hi - lo) / 255, sent as uint8 after the n x channels float32 pairs (lo, s); the cloud
    reads lo + code * s. The error is at most s / 2 per value. Per channel because z's channels
    differ in range by an order of magnitude after batch norm, and per sample so that one outlier
    image does not coarsen the others; the pairs cost 8 bytes per channel.
* a learned bottleneck's codes (``CODES``, ``codes_path(name)``), integers below 2**param:
  - ``bottleneck``: packed ``param`` bits to a value (``core.codes.pack_codes``);
  - ``bottleneck-zlib``: the same bytes through raw DEFLATE where that is shorter, one flag byte
    first (``core.codes.entropy_code``).
* the image itself (``IMAGES``, ``IMAGE_PATH``), uint8 pixels: ``raw``, ``png`` (lossless),
  ``jpeg`` and ``webp`` (lossy at quality ``param``), the formats through Pillow
  (``deploy.image_wire``).

Wires whose bytes vary per sample (the entropy-coded and image formats) send n uint32 lengths,
then the samples one after the other.

A response body is b"DDNL" | version u8 | reserved u8 | classes u16 | n u32, then the float32
logits [n, classes].

Every decoder checks the header and the exact length against it, and raises ``WireError`` with a
one-line reason: the server answers malformed requests with it. Both ends also take the service's
URL paths from here, so the client never imports the server.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ddnn_jax.core import codes
from ddnn_jax.deploy import image_wire

VERSION = 1
HEALTH_PATH = "/health"  # GET: JSON describing what the cloud serves
CLOUD_PATH = "/v1/cloud"  # POST: edge features in, cloud logits out
IMAGE_PATH = "/v1/image"  # POST: images in, the whole DDNN's cloud logits out
CONTENT_TYPE = "application/x-ddnn-features"
LOGITS_CONTENT_TYPE = "application/x-ddnn-logits"
FEATURES, CODES, IMAGES = "features", "codes", "images"  # what a wire carries
_REQUEST = struct.Struct("<4sBBHIHHHH")
_RESPONSE = struct.Struct("<4sBBHI")
_LENGTH = np.dtype("<u4")
REQUEST_HEADER_BYTES = _REQUEST.size
# The most samples in one request: each power of two up to 'ddnn serve --max-batch' is compiled
# before serving, and the bound keeps that to 13 programs a route and a request to about 100 MB
# of Fashion-MNIST's fp32 z; 'ddnn edge --batch' has the same bound.
MAX_BATCH = 4096
_LEVELS = 255  # uint8 codes 0..255


def codes_path(name: str) -> str:
    """POST: codes of the bottleneck ``name`` in, cloud logits through it out."""
    return f"/v1/codes/{name}"


class WireError(ValueError):
    """A body that does not follow the format (the reason is one line)."""


class WireRefused(WireError):
    """A well-formed body the served model cannot take: another version, wire or shape."""


class Batch(NamedTuple):
    """A decoded request: its wire, the header's param and the samples [n, h, w, c]."""

    wire: str
    param: int
    values: np.ndarray  # float32 features, uint8 codes or uint8 images


Shape = Sequence[int]


class Wire(NamedTuple):
    """One way of sending a batch: its code in the header, what it carries and its payload."""

    code: int
    kind: str  # FEATURES, CODES or IMAGES
    encode: Callable[[np.ndarray, int], bytes]  # (batch, param) -> payload
    # (payload, n, shape, param) -> batch; raises WireError
    decode: Callable[[memoryview, int, Shape, int], np.ndarray]
    # payload bytes of one sample, or None where they vary per sample
    sample_bytes: Callable[[Shape, int], int | None]
    # the most payload bytes one sample may take: what the server's body limit allows for
    sample_bound: Callable[[Shape, int], int]


def _fixed(size: Callable[[Shape, int], int]) -> dict[str, Callable]:
    return {"sample_bytes": size, "sample_bound": size}


def _float_decoder(dtype: str) -> Callable[[memoryview, int, Shape, int], np.ndarray]:
    def decode(payload: memoryview, n: int, shape: Shape, param: int) -> np.ndarray:
        return np.frombuffer(payload, dtype).reshape(n, *shape).astype(np.float32)

    return decode


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [n, h, w, c], lo float32 [n, c], step float32 [n, c]) of float32 features."""
    lo = features.min(axis=(1, 2))
    step = (features.max(axis=(1, 2)) - lo) / np.float32(_LEVELS)
    step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)  # constant channel: codes 0
    quantized = np.rint((features - lo[:, None, None, :]) / step[:, None, None, :])
    return np.clip(quantized, 0, _LEVELS).astype(np.uint8), lo.astype(np.float32), step


def dequantize_int8(quantized: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """lo + code * step, in float32."""
    return lo[:, None, None, :] + quantized.astype(np.float32) * step[:, None, None, :]


def _encode_int8(features: np.ndarray, param: int) -> bytes:
    quantized, lo, step = quantize_int8(features)
    return np.stack([lo, step], axis=-1).astype("<f4").tobytes() + quantized.tobytes()


def _decode_int8(payload: memoryview, n: int, shape: Shape, param: int) -> np.ndarray:
    c = shape[-1]
    pairs = np.frombuffer(payload[: n * c * 8], "<f4").reshape(n, c, 2)
    quantized = np.frombuffer(payload[n * c * 8 :], np.uint8).reshape(n, *shape)
    return dequantize_int8(quantized, pairs[..., 0], pairs[..., 1])


def _values(shape: Shape) -> int:
    return int(np.prod(shape))


def _check_bits(param: int) -> None:
    if param not in codes.BITS:
        raise WireRefused(f"codes of {param} bits: a bottleneck sends {' or '.join(map(str, codes.BITS))}")


def _decode_packed(payload: memoryview, n: int, shape: Shape, param: int) -> np.ndarray:
    _check_bits(param)
    packed = np.frombuffer(payload, np.uint8).reshape(n, -1)
    return codes.unpack_codes(packed, param, shape)


def _packed_bytes(shape: Shape, param: int) -> int:
    return -(-_values(shape) * param // 8)


def frame(samples: Sequence[bytes]) -> bytes:
    """Samples of varying length as one payload: their uint32 lengths, then the samples."""
    return np.asarray([len(s) for s in samples], _LENGTH).tobytes() + b"".join(samples)


def unframe(payload: memoryview, n: int, bound: int) -> list[memoryview]:
    """``frame``'s inverse for n samples of at most ``bound`` bytes each; raises WireError."""
    table = n * _LENGTH.itemsize
    if len(payload) < table:
        raise WireError(f"truncated body: {n} samples need a {table}-byte length table")
    lengths = np.frombuffer(payload[:table], _LENGTH).astype(np.int64)
    if lengths.max() > bound:
        raise WireError(f"a sample of {lengths.max()} bytes, over the {bound} this wire allows")
    if table + lengths.sum() != len(payload):
        what = "truncated" if table + lengths.sum() > len(payload) else "too long"
        raise WireError(f"{what} body: its samples take {table + lengths.sum()} bytes, got {len(payload)}")
    ends = table + np.cumsum(lengths)
    return [payload[end - size : end] for end, size in zip(ends.tolist(), lengths.tolist(), strict=True)]


def _encode_zlib(values: np.ndarray, param: int) -> bytes:
    return frame(codes.entropy_code(values, param))


def _decode_zlib(payload: memoryview, n: int, shape: Shape, param: int) -> np.ndarray:
    _check_bits(param)
    size = _packed_bytes(shape, param)
    try:
        packed = [codes.entropy_decode(bytes(sample), size) for sample in unframe(payload, n, 1 + size)]
    except ValueError as err:
        raise WireError(f"undecodable codes: {err}") from None
    return codes.unpack_codes(np.stack(packed), param, shape)


def _image_wire(code: int, form: str) -> Wire:
    def encode(images: np.ndarray, param: int) -> bytes:
        return frame([image_wire.encode_image(image, form, param) for image in images])

    def decode(payload: memoryview, n: int, shape: Shape, param: int) -> np.ndarray:
        bound = image_wire.bound(shape)
        try:
            return np.stack([image_wire.decode_image(s, form, shape) for s in unframe(payload, n, bound)])
        except image_wire.ImageError as err:
            raise WireError(str(err)) from None

    return Wire(code, IMAGES, encode, decode, lambda shape, param: None, lambda s, p: image_wire.bound(s))


WIRES: dict[str, Wire] = {
    "fp32": Wire(
        0,
        FEATURES,
        lambda z, param: z.astype("<f4").tobytes(),
        _float_decoder("<f4"),
        **_fixed(lambda shape, param: _values(shape) * 4),
    ),
    "fp16": Wire(
        1,
        FEATURES,
        lambda z, param: z.astype("<f2").tobytes(),
        _float_decoder("<f2"),
        **_fixed(lambda shape, param: _values(shape) * 2),
    ),
    "int8": Wire(
        2, FEATURES, _encode_int8, _decode_int8, **_fixed(lambda shape, param: _values(shape) + shape[-1] * 8)
    ),
    "bottleneck": Wire(
        3,
        CODES,
        lambda values, param: codes.pack_codes(values, param).tobytes(),
        _decode_packed,
        **_fixed(_packed_bytes),
    ),
    "bottleneck-zlib": Wire(
        4, CODES, _encode_zlib, _decode_zlib, lambda shape, param: None, lambda s, p: 1 + _packed_bytes(s, p)
    ),
    "raw": Wire(
        5,
        IMAGES,
        lambda images, param: images.astype(np.uint8).tobytes(),
        lambda payload, n, shape, param: np.frombuffer(payload, np.uint8).reshape(n, *shape),
        **_fixed(lambda shape, param: _values(shape)),
    ),
    "png": _image_wire(6, "png"),
    "jpeg": _image_wire(7, "jpeg"),
    "webp": _image_wire(8, "webp"),
}
_BY_CODE = {w.code: name for name, w in WIRES.items()}


def wires_of(kind: str) -> tuple[str, ...]:
    """The names of the wires that carry ``kind``."""
    return tuple(name for name, w in WIRES.items() if w.kind == kind)


def _wire(name: str) -> Wire:
    if name not in WIRES:
        raise WireError(f"unknown wire '{name}': choose from {', '.join(WIRES)}")
    return WIRES[name]


def payload_bytes(wire: str, shape: Shape, param: int = 0) -> int | None:
    """Bytes one sample of ``shape`` (h, w, c) takes after the header; None where they vary."""
    return _wire(wire).sample_bytes(shape, param)


def fixed_size(wire: str) -> bool:
    """Whether every sample takes the same bytes in ``wire`` (else they vary with its content)."""
    return _wire(wire).sample_bytes((1, 1, 1), 8) is not None


def request_bound(wire_names: Sequence[str], shape: Shape, param: int, n: int) -> int:
    """The largest request body of n samples of ``shape`` in any of ``wire_names``."""
    per_sample = max(_LENGTH.itemsize + WIRES[w].sample_bound(shape, param) for w in wire_names)
    return REQUEST_HEADER_BYTES + n * per_sample


def encode(batch: np.ndarray, wire: str, param: int = 0) -> bytes:
    """A request body: samples [n, h, w, c] (float32 features, uint8 codes or images) in ``wire``;
    ``param``: the codes' bits, or a lossy image format's quality."""
    spec = _wire(wire)
    batch = np.asarray(batch, np.float32 if spec.kind == FEATURES else np.uint8)
    n, h, w, c = batch.shape
    header = _REQUEST.pack(b"DDNZ", VERSION, spec.code, param, n, h, w, c, 0)
    return header + spec.encode(batch, param)


def decode(body: bytes, expected_shape: Shape, kind: str = FEATURES, param: int | None = None) -> Batch:
    """The samples of a request body, checked against what the route serves: ``kind``, the
    shape (h, w, c) and, where given, the param (a bottleneck's bits).

    Raises:
      WireError: a body too short for its header, another format or version, an unknown wire, a
        wire of another kind, another shape or param, a payload of the wrong length, non-finite
        features.
    """
    if len(body) < _REQUEST.size:
        raise WireError(f"truncated header: {len(body)} bytes, a request starts with {_REQUEST.size}")
    magic, version, code, got_param, n, h, w, c, _ = _REQUEST.unpack_from(body)
    if magic != b"DDNZ":
        raise WireError("not a ddnn request (bad magic): send ddnn_jax.deploy.wire.encode bodies")
    if version != VERSION:
        raise WireRefused(f"wire format version {version} is not served here (this server speaks {VERSION})")
    if code not in _BY_CODE or WIRES[_BY_CODE[code]].kind != kind:
        raise WireRefused(
            f"wire code {code} is not served on this route: it reads {', '.join(wires_of(kind))}"
        )
    name = _BY_CODE[code]
    if (h, w, c) != tuple(expected_shape):
        raise WireRefused(
            f"{kind} of shape {h}x{w}x{c} do not match the served model's "
            f"{'x'.join(map(str, expected_shape))}: the edge must run the same trained model"
        )
    if param is not None and got_param != param:
        raise WireRefused(f"codes of {got_param} bits, this bottleneck's are {param}")
    if n == 0:
        raise WireError("the request holds no sample: send at least one")
    spec, payload = WIRES[name], memoryview(body)[_REQUEST.size :]
    size = spec.sample_bytes((h, w, c), got_param)
    if size is not None and len(payload) != n * size:
        what = "truncated" if len(payload) < n * size else "too long"
        expected = _REQUEST.size + n * size
        raise WireError(
            f"{what} body: {n} {name} samples of {h}x{w}x{c} take {expected} bytes, got {len(body)}"
        )
    values = spec.decode(payload, n, (h, w, c), got_param)
    if kind == FEATURES and not np.isfinite(values).all():
        raise WireError("the features hold NaN or infinity: the edge sent values the cloud cannot use")
    return Batch(name, got_param, values)


def encode_logits(logits: np.ndarray) -> bytes:
    """A response body: float32 logits [n, classes]."""
    n, classes = logits.shape
    return _RESPONSE.pack(b"DDNL", VERSION, 0, classes, n) + np.asarray(logits, "<f4").tobytes()


def logits_bytes(n: int, classes: int) -> int:
    """The exact length of a response body of n samples' logits."""
    return _RESPONSE.size + n * classes * 4


def decode_logits(body: bytes, n: int, classes: int) -> np.ndarray:
    """The float32 logits [n, classes] of a response body that must hold exactly that, every
    one finite (a NaN's argmax would be class 0, a wrong answer the edge could not tell)."""
    if len(body) < _RESPONSE.size:
        raise WireError(f"truncated answer: {len(body)} bytes")
    magic, version, _, got_classes, got_n = _RESPONSE.unpack_from(body)
    if magic != b"DDNL" or version != VERSION:
        raise WireError("the answer is not ddnn logits of this version")
    if (got_n, got_classes) != (n, classes) or len(body) != _RESPONSE.size + n * classes * 4:
        raise WireError(f"the answer holds {got_n}x{got_classes} logits, expected {n}x{classes}")
    logits = np.frombuffer(body, "<f4", offset=_RESPONSE.size).reshape(n, classes).astype(np.float32)
    bad = non_finite_rows(logits)
    if bad:
        raise WireError(f"the answer holds non-finite logits for {bad} of {n} samples")
    return logits


def non_finite_rows(logits: np.ndarray) -> int:
    """Samples of logits [n, classes] with a NaN or an infinity: never an answer to pass on."""
    return int((~np.isfinite(logits)).any(axis=1).sum())
