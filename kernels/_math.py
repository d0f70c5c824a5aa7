"""Elementwise fp32 math for kernels that must run both compiled and under the interpreter.

libdevice functions (atan, acos, log1p, tanh, pow, ...) do not run under Triton's
interpreter, and the GPU's `tl.exp` (a scaled `ex2.approx`) loses relative accuracy for
large arguments. These helpers use only exp2, log, sqrt and arithmetic, with argument
reduction so that each stays within about 1e-6 relative of the float64 function over its
whole domain (tests/test_math.py states the bound and the measured error). NaN in gives NaN out.
"""

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
# ln 2 split so that n * _LN2_HI is exact for |n| < 2**11 (Cody and Waite).
_LN2_HI = tl.constexpr(0.693145751953125)
_LN2_LO = tl.constexpr(1.4286068202862268e-06)
_PI_2 = tl.constexpr(1.5707963267948966)
_PI_4 = tl.constexpr(0.7853981633974483)
_TAN_PI_8 = tl.constexpr(0.41421356237309503)


@triton.jit
def sign(x):
    """-1, 0 or +1 (NaN for NaN), as torch.sign."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x * 0.0))


@triton.jit
def exp(x):
    """e^x with argument reduction: x = n ln2 + r, |r| <= ln2/2, e^x = 2^n e^r."""
    x = tl.where(x < -104.0, -104.0, tl.where(x > 89.0, 89.0, x))  # e^x is 0 / inf beyond
    n = tl.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    half = tl.floor(n * 0.5)  # 2^n in two factors so 2^128 * e^-0.3 does not overflow early
    return tl.exp2(r * _LOG2E) * tl.exp2(half) * tl.exp2(n - half)


@triton.jit
def expm1(x):
    """e^x - 1, accurate near 0 (Taylor series for |x| < 1/2)."""
    p = 1.0 + x / 9.0
    p = 1.0 + x / 8.0 * p
    p = 1.0 + x / 7.0 * p
    p = 1.0 + x / 6.0 * p
    p = 1.0 + x / 5.0 * p
    p = 1.0 + x / 4.0 * p
    p = 1.0 + x / 3.0 * p
    p = 1.0 + x / 2.0 * p
    return tl.where(tl.abs(x) < 0.5, x * p, exp(x) - 1.0)


@triton.jit
def log1p(x):
    """ln(1 + x): 2 atanh(s), s = x / (2 + x), as a series for |x| < 1/4, else ln(1 + x)."""
    s = x / (2.0 + x)
    z = s * s
    p = 1.0 / 9.0
    p = 1.0 / 7.0 + z * p
    p = 1.0 / 5.0 + z * p
    p = 1.0 / 3.0 + z * p
    p = 1.0 + z * p
    return tl.where(tl.abs(x) < 0.25, 2.0 * s * p, tl.log(1.0 + x))


@triton.jit
def softplus(x):
    """ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|): finite for every finite x."""
    return tl.where(x > 0, x, 0.0) + log1p(exp(-tl.abs(x)))


@triton.jit
def tanh(x):
    """tanh x = -t / (t + 2) with t = expm1(-2|x|), sign restored: no overflow, exact near 0."""
    t = expm1(-2.0 * tl.abs(x))
    r = -t / (t + 2.0)
    return tl.where(x < 0, -r, r)


@triton.jit
def atan(x):
    """arctan x: reduce |x| to [0, 1] (pi/2 - atan(1/x)), then to |u| <= tan(pi/8)
    (pi/4 + atan((t - 1) / (t + 1))), then the Taylor series in u to u^17."""
    a = tl.abs(x)
    big = a > 1.0
    t = tl.where(big, 1.0 / tl.where(big, a, 1.0), a)
    mid = t > _TAN_PI_8
    u = tl.where(mid, (t - 1.0) / (t + 1.0), t)
    z = u * u
    p = 1.0 / 17.0
    p = 1.0 / 15.0 - z * p
    p = 1.0 / 13.0 - z * p
    p = 1.0 / 11.0 - z * p
    p = 1.0 / 9.0 - z * p
    p = 1.0 / 7.0 - z * p
    p = 1.0 / 5.0 - z * p
    p = 1.0 / 3.0 - z * p
    p = 1.0 - z * p
    r = u * p
    r = tl.where(mid, _PI_4 + r, r)
    r = tl.where(big, _PI_2 - r, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def acos(x):
    """arccos x = 2 atan(sqrt((1 - x) / (1 + x))); NaN outside [-1, 1]."""
    return 2.0 * atan(tl.sqrt((1.0 - x) / (1.0 + x)))


@triton.jit
def power(b, e):
    """b^e for b >= 0 (NaN for b < 0), with torch's values at b = 0: 0, 1 or inf."""
    at_zero = tl.where(e > 0, 0.0, tl.where(e == 0, 1.0, float("inf")))
    return tl.where(b == 0, at_zero, exp(e * tl.log(tl.where(b == 0, 1.0, b))))
