"""What crosses the network between the edge and the cloud: edge features z, and cloud logits.

A request body is a 20-byte header followed by the payload:

    magic b"DDNZ" | version u8 | wire u8 | reserved u16 | n u32 | height u16 | width u16 |
    channels u16 | reserved u16

all little-endian, then the n feature maps [n, height, width, channels] in one of three wires:

* ``fp32``: the float32 values as they are (the cloud sees exactly what the edge computed);
* ``fp16``: rounded to float16 (half the bytes);
* ``int8``: 8-bit codes with an affine scale per sample and channel. For each sample and channel,
  lo = min and hi = max over the map; code = round((z - lo) / s) with s = (hi - lo) / 255, sent as
  uint8 after the n x channels float32 pairs (lo, s); the cloud reads lo + code * s. The error is
  at most s / 2 per value. Per channel because z's channels differ in range by an order of
  magnitude after batch norm, and per sample so that one outlier image does not coarsen the others;
  the pairs cost 8 bytes per channel, 4 % of a Fashion-MNIST sample's codes.

A response body is b"DDNL" | version u8 | reserved u8 | classes u16 | n u32, then the float32
logits [n, classes].

Every decoder checks the header and the exact length against it, and raises ``WireError`` with a
one-line reason: the server answers malformed requests with it. Both ends also take the service's
URL paths from here (``HEALTH_PATH``, ``CLOUD_PATH``), so the client never imports the server.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

VERSION = 1
HEALTH_PATH = "/health"  # GET: JSON describing what the cloud serves
CLOUD_PATH = "/v1/cloud"  # POST: a request body in, a response body out
CONTENT_TYPE = "application/x-ddnn-features"
LOGITS_CONTENT_TYPE = "application/x-ddnn-logits"
WIRES = ("fp32", "fp16", "int8")
_WIRE_CODES = {name: code for code, name in enumerate(WIRES)}
_REQUEST = struct.Struct("<4sBBHIHHHH")
_RESPONSE = struct.Struct("<4sBBHI")
REQUEST_HEADER_BYTES = _REQUEST.size
_LEVELS = 255  # uint8 codes 0..255


class WireError(ValueError):
    """A body that does not follow the format (the reason is one line)."""


class WireRefused(WireError):
    """A well-formed body the served model cannot take: another version, wire or feature shape."""


class FeatureBatch(NamedTuple):
    """A decoded request: the wire it came in and the float32 features [n, h, w, c]."""

    wire: str
    features: np.ndarray


def payload_bytes(wire: str, shape: tuple[int, int, int]) -> int:
    """Bytes one sample of ``shape`` (h, w, c) takes after the header."""
    h, w, c = shape
    if wire == "fp32":
        return h * w * c * 4
    if wire == "fp16":
        return h * w * c * 2
    if wire == "int8":
        return h * w * c + c * 8
    raise WireError(f"unknown wire '{wire}': choose from {', '.join(WIRES)}")


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [n, h, w, c], lo float32 [n, c], step float32 [n, c]) of float32 features."""
    lo = features.min(axis=(1, 2))
    step = (features.max(axis=(1, 2)) - lo) / np.float32(_LEVELS)
    step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)  # constant channel: codes 0
    codes = np.rint((features - lo[:, None, None, :]) / step[:, None, None, :])
    return np.clip(codes, 0, _LEVELS).astype(np.uint8), lo.astype(np.float32), step


def dequantize_int8(codes: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """lo + code * step, in float32."""
    return lo[:, None, None, :] + codes.astype(np.float32) * step[:, None, None, :]


def encode_features(features: np.ndarray, wire: str) -> bytes:
    """A request body: float32 features [n, h, w, c] in ``wire``."""
    if wire not in _WIRE_CODES:
        raise WireError(f"unknown wire '{wire}': choose from {', '.join(WIRES)}")
    features = np.asarray(features, np.float32)
    n, h, w, c = features.shape
    header = _REQUEST.pack(b"DDNZ", VERSION, _WIRE_CODES[wire], 0, n, h, w, c, 0)
    if wire == "fp32":
        return header + features.astype("<f4").tobytes()
    if wire == "fp16":
        return header + features.astype("<f2").tobytes()
    codes, lo, step = quantize_int8(features)
    return header + np.stack([lo, step], axis=-1).astype("<f4").tobytes() + codes.tobytes()


def decode_features(body: bytes, expected_shape: tuple[int, int, int]) -> FeatureBatch:
    """The features of a request body, checked against the served shape (h, w, c).

    Raises:
      WireError: a body too short for its header, another format or version, an unknown wire, a
        shape other than ``expected_shape``, a payload of the wrong length, non-finite values.
    """
    if len(body) < _REQUEST.size:
        raise WireError(f"truncated header: {len(body)} bytes, a request starts with {_REQUEST.size}")
    magic, version, code, _, n, h, w, c, _ = _REQUEST.unpack_from(body)
    if magic != b"DDNZ":
        raise WireError(
            "not a ddnn feature request (bad magic): send ddnn_jax.deploy.wire.encode_features bodies"
        )
    if version != VERSION:
        raise WireRefused(f"wire format version {version} is not served here (this server speaks {VERSION})")
    if code >= len(WIRES):
        raise WireRefused(f"unknown wire code {code}: this server reads {', '.join(WIRES)}")
    wire = WIRES[code]
    if (h, w, c) != tuple(expected_shape):
        raise WireRefused(
            f"feature shape {h}x{w}x{c} does not match the served cloud's "
            f"{'x'.join(map(str, expected_shape))}: the edge must run the same trained model"
        )
    if n == 0:
        raise WireError("the request holds no sample: send at least one")
    expected = _REQUEST.size + n * payload_bytes(wire, (h, w, c))
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "too long"
        raise WireError(
            f"{what} body: {n} {wire} samples of {h}x{w}x{c} take {expected} bytes, got {len(body)}"
        )
    payload = memoryview(body)[_REQUEST.size :]
    if wire == "int8":
        pairs = np.frombuffer(payload[: n * c * 8], "<f4").reshape(n, c, 2)
        codes = np.frombuffer(payload[n * c * 8 :], np.uint8).reshape(n, h, w, c)
        features = dequantize_int8(codes, pairs[..., 0], pairs[..., 1])
    else:
        features = np.frombuffer(payload, "<f4" if wire == "fp32" else "<f2").reshape(n, h, w, c)
        features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise WireError("the features hold NaN or infinity: the edge sent values the cloud cannot use")
    return FeatureBatch(wire, features)


def encode_logits(logits: np.ndarray) -> bytes:
    """A response body: float32 logits [n, classes]."""
    n, classes = logits.shape
    return _RESPONSE.pack(b"DDNL", VERSION, 0, classes, n) + np.asarray(logits, "<f4").tobytes()


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
