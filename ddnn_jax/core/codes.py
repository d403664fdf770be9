"""A bottleneck's integer codes as bytes, in NumPy and the standard library only, so that an edge
without JAX (``deploy.device_edge``) packs them as the JAX one does: packed ``bits`` to a value,
and each sample optionally through raw DEFLATE."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

BITS = (4, 8)  # a code value's bits


def pack_codes(codes, bits: int) -> np.ndarray:
    """[n, B] uint8: each sample's integer codes packed ``bits`` to a value, in C order (at 4 bits
    two to a byte, the first in the high half; an odd count pads the last byte with zero)."""
    flat = np.asarray(codes, np.uint8).reshape(len(codes), -1)
    if bits == 8:
        return flat
    padded = np.pad(flat, ((0, 0), (0, flat.shape[1] % 2)))
    return (padded[:, 0::2] << 4 | padded[:, 1::2]).astype(np.uint8)


def unpack_codes(packed, bits: int, code_shape: Sequence[int]) -> np.ndarray:
    """``pack_codes``'s inverse: [n, h, w, k] uint8 codes of [n, B] packed bytes."""
    packed = np.asarray(packed, np.uint8)
    if bits == 4:
        packed = np.stack([packed >> 4, packed & 0x0F], axis=-1).reshape(len(packed), -1)
    return packed[:, : math.prod(code_shape)].reshape(len(packed), *code_shape)


def entropy_code(codes, bits: int) -> list[bytes]:
    """Each sample's packed codes through raw DEFLATE (zlib, level 9) where that is shorter, after
    one flag byte saying which (1: deflated, 0: as packed): the payload of an entropy-coded
    offload, whose size varies per sample. zlib is the standard library's, so neither end needs
    another package; on a few hundred bytes of codes a stronger coder has little to find."""
    coded = []
    for row in pack_codes(codes, bits):
        packed = row.tobytes()
        deflated = zlib.compress(packed, 9, wbits=-15)
        coded.append(b"\x01" + deflated if len(deflated) < len(packed) else b"\x00" + packed)
    return coded


def framed_sizes(codes, bits: int) -> np.ndarray:
    """[n] bytes each sample's codes take on the entropy-coded wire: its 4-byte length and its
    ``entropy_code`` bytes (``deploy.wire``'s bottleneck-zlib payload)."""
    return np.asarray([4 + len(coded) for coded in entropy_code(codes, bits)], np.int32)


def entropy_decode(coded: bytes, packed_bytes: int) -> np.ndarray:
    """``entropy_code``'s inverse for one sample: its ``packed_bytes`` packed bytes. Raises
    ValueError on anything else, and inflates no further than that (no zip bomb)."""
    flag, body = coded[:1], coded[1:]
    if flag == b"\x01":
        inflater = zlib.decompressobj(wbits=-15)
        try:
            body = inflater.decompress(body, packed_bytes)
        except zlib.error as err:
            raise ValueError(f"bad DEFLATE stream ({err})") from None
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise ValueError(f"the DEFLATE stream does not end at {packed_bytes} bytes")
    elif flag != b"\x00":
        raise ValueError("the first byte of a sample must be 0 (packed) or 1 (deflated)")
    if len(body) != packed_bytes:
        raise ValueError(f"{len(body)} packed bytes, expected {packed_bytes}")
    return np.frombuffer(body, np.uint8)
