"""float16 kernels the store needs often: widening to float32 and finding NaN or Inf, exactly.

numpy converts float16 one element at a time in software (about 3 ns an element here), so a
[50 000, 1000] prediction would spend more time converting than reading. Both kernels work on
the bits in a few vectorised passes over cache-sized pieces.
"""

from __future__ import annotations

import numpy as np

# Elements per pass of the bit tricks: source, target and a temporary stay in L2 cache.
PASS_ITEMS = 1 << 16
# Elements per pass of the finite check, which has one temporary: fewer Python steps.
CHECK_ITEMS = 1 << 18
_HALF_SCALE = np.float32(2.0**112)  # float32 exponent bias (127) minus float16's (15)
_SIGN_EXP_MANTISSA = np.int32(-0x70002000)  # 0x8FFFE000: the sign bit and float16's 15 bits
_HALF_LIMIT = np.float32(65536.0)  # a widened Inf or NaN lands at or beyond ±2**16


def widen_float16(half: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = half`` (float16 → C-contiguous float32 of the same size), exactly, faster.

    The float16 bits, sign-extended to 32 and shifted left by 13, hold the exponent and mantissa
    in float32 position and the sign in bits 28 to 31; masking 28 to 30 away and rescaling by
    2**112 gives the same value for every finite float16, subnormals included, in four passes
    (numpy's cast took 1.3 to 2.8 times as long). Pieces holding Inf or NaN (ee never stores
    them), which the bits would make ±65536 or more, take numpy's cast instead. A process that
    flushes subnormals to zero (no library here does) would read float16 subnormals,
    |x| < 6.1e-5, as 0.
    """
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.size != half.size:
        raise ValueError("widen_float16 writes into a C-contiguous float32 array of equal size")
    src = np.ascontiguousarray(half).reshape(-1)
    dst = out.reshape(-1)
    signed, bits = src.view(np.int16), dst.view(np.int32)
    for lo in range(0, len(src), PASS_ITEMS):
        hi = min(lo + PASS_ITEMS, len(src))
        b, f = bits[lo:hi], dst[lo:hi]
        np.copyto(b, signed[lo:hi])  # sign-extends: bits 15 to 31 all hold the sign
        np.left_shift(b, 13, out=b)
        np.bitwise_and(b, _SIGN_EXP_MANTISSA, out=b)
        np.multiply(f, _HALF_SCALE, out=f)
        if f.max() >= _HALF_LIMIT or f.min() <= -_HALF_LIMIT:
            np.copyto(f, src[lo:hi])
    return out


def all_finite(values: np.ndarray) -> bool:
    """No NaN or Inf in ``values``, without a boolean temporary the size of the block.

    One thread: the check runs at memory speed, and a second thread made it no faster on the
    2-core machine (``io_pool.in_parallel`` helps copies between files and memory, not this).
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    scratch = np.empty(min(CHECK_ITEMS, len(flat)), np.uint16)  # reused: no page faults
    return all(
        _finite_piece(flat[a : a + CHECK_ITEMS], scratch) for a in range(0, len(flat), CHECK_ITEMS)
    )


def _finite_piece(piece: np.ndarray, scratch: np.ndarray) -> bool:
    if piece.dtype == np.float16:  # exponent bits all ones = Inf or NaN
        bits = np.bitwise_and(piece.view(np.uint16), 0x7FFF, out=scratch[: len(piece)])
        return bool(bits.max() < 0x7C00)
    # a sum is one vectorised pass; NaN and Inf make it non-finite (rare overflow is rechecked)
    with np.errstate(over="ignore", invalid="ignore"):
        total = piece.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(piece).all())
