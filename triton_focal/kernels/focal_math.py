"""Focal-loss math shared by every Triton kernel, stated once.

Names, in every math module of the package (these kernels, ``_compiled_math.py``,
``_row_math.py``, ``reference.py``):

* ``x`` the logits as given; ``z`` a softmax row's logits after the softcap; ``lse`` its
  log-sum-exp; ``log_p`` (``l`` in formulas) and ``p`` a class's log-probability and
  probability; ``q = 1 - p`` (for a sigmoid element, ``1 - p_t``).
* ``gamma`` the focusing exponent; ``f = q ** gamma * (-log p)`` one class's focal loss (the
  reference's ``class_focal_loss``); ``g`` its gradient coefficient, ``d f / d z_j = g (p_j -
  [j == c])`` (``focal_term`` returns ``(f, g)``; the compile backend's row math calls ``g``
  ``coef``, as ``g`` is gamma in its derivation).
* a *row* is one ``(n, p)`` of ``(N, C, P)`` logits: one pixel's or token's classes; a *tile*
  the rows one program handles at a time; a sigmoid *term* one element's loss
  (``triton_focal/sigmoid_term.py``).

All helpers work on float32 tensors of any shape (the kernels pass tiles) and are
written so that no finite input produces NaN or inf:

* ``1 - p`` is never formed by subtracting a probability close to 1 from 1; callers
  pass it in from the other classes' mass (softmax) or from ``sigmoid(-x)``
  (sigmoid).
* ``(1 - p) ** gamma`` is ``exp2(gamma * log2(max(1 - p, FP32_TINY)))``: ``0 ** 0`` is 1,
  ``0 ** gamma`` underflows to 0, and ``(1 - p) ** (gamma - 1)`` stays below
  ``2 ** 126`` for every ``gamma >= 0`` (kornia's and optax's focal losses have had NaN
  gradients at saturated logits for ``gamma < 1``).
"""

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

# Smallest normal float32. Clamping 1 - p to it keeps (1 - p) ** (gamma - 1) finite.
FP32_TINY = tl.constexpr(1.1754943508222875e-38)  # a constexpr object: compiled kernels may read it
FP32_MAX = tl.constexpr(3.4028234663852886e38)
# exp(x) = exp2(x * LOG2E) and log(x) = log2(x) * LN2: in float32, exp2 and log2 are single MUFU
# instructions (ex2.approx, lg2.approx: about 2 ulp, and 2**-22 absolute for log2 near 1), where
# exp and log are longer sequences. Callers keep exact forms where a cancellation would amplify
# the error (log p near p = 1, 1 - p near p = 1); float64 gets exact functions throughout.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# The interpreter runs numpy, which has neither libdevice nor MUFU: there log2 is exact.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")
# The fast functions are CUDA's libdevice (MUFU lg2.approx, div.approx): ROCm's libdevice has
# no fast_log2f, and the error bounds below are NVIDIA's, so every other target gets the exact
# functions. ``is_cuda()`` is decided when a kernel is compiled, for the target it is compiled
# for; a Triton too old to say built these kernels for CUDA only.
try:
    from triton.language.target_info import is_cuda
except ImportError:
    is_cuda = None
TARGET_KNOWN = tl.constexpr(is_cuda is not None)


@triton.jit
def join_float(hi, lo, dtype: tl.constexpr):
    """A float argument passed as two float32 halves (``ops/scalars.py``), in ``dtype``."""
    # tl.cast, not .to(): the interpreter hands scalar arguments in as Python floats.
    return tl.cast(hi, dtype) + tl.cast(lo, dtype)


@triton.jit
def log1p(x):
    """log(1 + x) accurate for tiny |x| (Goldberg's trick: the rounding of 1 + x cancels)."""
    u = 1.0 + x
    # u - 1 is x as rounded into u; log(u) / (u - 1) is smooth, so the ratio corrects it.
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def target_log_prob(x_target, lse, q_target):
    """``log p_y`` of the target class, given ``1 - p_y`` from the other classes' mass.

    Near ``p_y = 1`` the difference ``x_y - lse`` has only absolute precision, so the
    log comes from ``log1p(-(1 - p_y))`` there; far from 1 the difference is exact.
    """
    return tl.where(q_target < 0.5, log1p(-q_target), x_target - lse)


@triton.jit
def one_minus_exp(log_p):
    """``1 - exp(log_p)`` for ``log_p <= 0`` without cancellation near 0 (``-expm1``).

    Above ``-ln 2`` (``p > 1/2``, at most one class per row) ``1 - p`` would cancel. Float32
    uses the Taylor series of ``-expm1`` there: ten terms leave a relative error below 1e-8 on
    ``[-ln 2, 0]`` and cost no MUFU; below, ``1 - p >= 1/2`` is exact to an ulp of ``p``.
    Float64 uses Kahan's ``expm1``, ``(u - 1) * x / log(u)``, where the rounding of ``u`` cancels.
    """
    u = tl.exp2(log_p * LOG2E)
    near_one = log_p > -LN2
    if log_p.dtype == tl.float64:
        log_u = tl.where(near_one & (u != 1.0), tl.log(u), 1.0)
        expm1 = tl.where(u == 1.0, log_p, (u - 1.0) * log_p / log_u)
    else:
        # Horner: x (1 + x/2 (1 + x/3 (1 + ... (1 + x/10))))
        x = tl.where(near_one, log_p, 0.0)
        t = 1.0 + x * 0.1
        t = 1.0 + x * (1.0 / 9.0) * t
        t = 1.0 + x * 0.125 * t
        t = 1.0 + x * (1.0 / 7.0) * t
        t = 1.0 + x * (1.0 / 6.0) * t
        t = 1.0 + x * 0.2 * t
        t = 1.0 + x * 0.25 * t
        t = 1.0 + x * (1.0 / 3.0) * t
        t = 1.0 + x * 0.5 * t
        expm1 = x * t
    return tl.where(near_one, -expm1, 1.0 - u)


@triton.jit
def softcap_logits(x, cap):
    """``cap * tanh(x / cap)`` (Gemma 2's logit softcapping), odd and without cancellation:
    ``tanh |u| = (1 - e) / (1 + e) = t / (2 - t)`` with ``t = 1 - exp(-2 |u|)`` from
    ``one_minus_exp``, exact to a few ulp even where ``tanh u ~ u``."""
    u = x / cap
    t = one_minus_exp(-2.0 * tl.abs(u))
    tanh_abs = t / (2.0 - t)
    return cap * tl.where(u < 0, -tanh_abs, tanh_abs)


@triton.jit
def fast_log2(x):
    """``log2(x)``: one MUFU ``lg2.approx`` for float32 on a CUDA GPU (2 ulp; 2**-22 absolute for
    ``x`` in ``[1/2, 2]``, so callers never take it of ``1 - tiny``); exact elsewhere.
    ``tl.log2`` would be a libdevice polynomial of about twelve instructions."""
    if x.dtype == tl.float32 and not INTERPRETED:
        if not TARGET_KNOWN:
            return libdevice.fast_log2f(x)
        elif is_cuda():
            return libdevice.fast_log2f(x)
    return tl.log2(x)


@triton.jit
def _rcp_approx(x):
    # one MUFU.RCP (1 ulp); ftz is harmless where x is never subnormal. libdevice's
    # fast_dividef(1, x) is div.approx.ftz, which ptxas gives its own flushed copy of x
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def fast_reciprocal(x):
    """``1 / x`` for ``x`` in ``[1, 2]``: one MUFU ``rcp.approx`` for float32 on a CUDA GPU
    (1 ulp), without the range reduction of ``div.full``; exact elsewhere."""
    if x.dtype == tl.float32 and not INTERPRETED:
        if not TARGET_KNOWN:
            return _rcp_approx(x)
        elif is_cuda():
            return _rcp_approx(x)
    return 1.0 / x


@triton.jit
def fast_divide(a, b):
    """``a / b`` for ``|b|`` in ``[2**-126, 2**126]``: one MUFU ``rcp.approx`` and a multiply for
    float32 on a CUDA GPU (``__fdividef``, 2 ulp); exact elsewhere. Where ``b`` is a clamped
    probability (at least the smallest normal float) the range always holds."""
    if a.dtype == tl.float32 and not INTERPRETED:
        if not TARGET_KNOWN:
            return libdevice.fast_dividef(a, b)
        elif is_cuda():
            return libdevice.fast_dividef(a, b)
    return a / b


@triton.jit
def q_powers(q, gamma, GAMMA_INT: tl.constexpr):
    """``(q ** gamma, q ** (gamma - 1))`` for ``q = 1 - p`` in ``[0, 1]``.

    ``GAMMA_INT >= 0``: ``gamma`` is that integer and the powers are products (no MUFU;
    ``q ** -1`` is never formed: at ``gamma = 0`` the second power is only ever multiplied by
    ``gamma``, so it is returned as 0). Otherwise ``exp2(gamma * log2 q)`` with ``q`` clamped
    to the smallest normal float32: ``0 ** 0 == 1``, ``0 ** gamma == 0``, and
    ``q ** (gamma - 1) <= 2 ** 126`` stays finite for every ``gamma >= 0``.
    """
    if GAMMA_INT == 0:
        return tl.full(q.shape, 1.0, q.dtype), tl.zeros(q.shape, q.dtype)
    elif GAMMA_INT > 0:
        q_pow_m1 = tl.full(q.shape, 1.0, q.dtype)
        for _ in tl.static_range(GAMMA_INT - 1):
            q_pow_m1 = q_pow_m1 * q
        return q_pow_m1 * q, q_pow_m1
    else:
        log2_q = fast_log2(tl.maximum(q, FP32_TINY))
        return tl.exp2(gamma * log2_q), tl.exp2((gamma - 1.0) * log2_q)


@triton.jit
def focal_term(log_p, p, q, gamma, GAMMA_INT: tl.constexpr = -1):
    """Focal loss of one class and its gradient coefficient.

    With ``q = 1 - p``::

        f = q ** gamma * (-log p)
        g = q ** gamma - gamma * p * log(p) * q ** (gamma - 1)

    and ``d f / d z_j = g * (p_j - [j == c])`` for softmax logits ``z`` (``f`` of class
    ``c``). ``g`` is 1 for ``gamma = 0`` (cross entropy) and stays finite as ``q -> 0``
    for any ``gamma >= 0`` because ``log p ~ -q`` there. At ``p = 0`` (a logit at ``-inf``)
    ``p log p`` is NaN here; its limit makes ``g = 1``, which callers that meet such a class
    substitute.

    Returns:
        ``(f, g)``.
    """
    q_pow_gamma, q_pow_gamma_m1 = q_powers(q, gamma, GAMMA_INT)
    f = -q_pow_gamma * log_p
    g = q_pow_gamma - gamma * p * log_p * q_pow_gamma_m1
    return f, g


@triton.jit
def log1p_unit(e):
    """``log(1 + e)`` for ``e`` in ``[0, 1]``: float32 to a relative 3e-6 (2e-7 below 1/16),
    float64 exact.

    Below 1/16 a Taylor polynomial (its first omitted term is below 1.6e-7 relative), since
    ``log2(1 + e)`` has only absolute precision near 1; above, one MUFU ``lg2`` (``1 + e`` is
    then at least 1.0625, and lg2.approx's 2**-22 absolute error is below 3e-6 relative).
    """
    if e.dtype == tl.float64:
        return log1p(e)
    series = e * (1.0 - e * (0.5 - e * ((1.0 / 3.0) - e * (0.25 - e * 0.2))))
    return tl.where(e < 0.0625, series, fast_log2(1.0 + e) * LN2)


@triton.jit
def finite_logit(x):
    """``x`` clamped to the finite floats, NaN kept NaN: one instruction on float32 (``FMNMX``
    with NaN propagation). Doubles take a compare and a select instead: Triton lowers the
    NaN-propagating clamp of a double to an NVVM intrinsic that does not exist
    (``fmin.nan.xorsign.abs``, float32 only)."""
    if x.dtype == tl.float64:
        return tl.where(x != x, x, tl.minimum(tl.maximum(x, -FP32_MAX), FP32_MAX))
    return tl.clamp(x, -FP32_MAX, FP32_MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def sigmoid_parts(x):
    """``(sigmoid(x), sigmoid(-x), log1p(exp(-|x|)))`` to full relative precision.

    ``e = exp(-|x|)`` lies in ``(0, 1]``, so nothing overflows, and the smaller sigmoid is
    ``e / (1 + e)`` rather than ``1 - (larger)``, which would cancel.
    """
    e = tl.exp2(-tl.abs(x) * LOG2E)
    big = fast_reciprocal(1.0 + e)
    small = e * big
    positive = x >= 0
    return tl.where(positive, big, small), tl.where(positive, small, big), log1p_unit(e)


@triton.jit
def binary_sigmoid_focal_term(x, positive, gamma, GAMMA_INT: tl.constexpr):
    """Sigmoid focal loss of one element with a 0/1 target, and its derivative.

    With ``s = +1`` for a positive, ``-1`` else, and ``z = s x``: ``p_t = sigmoid(z)``,
    ``q = 1 - p_t = sigmoid(-z)``, ``bce = softplus(-z)`` and ``log q = -softplus(z)`` (no
    logarithm of ``q`` is taken)::

        f     = q ** gamma * bce
        df/dz = -q ** gamma * (gamma * p_t * bce + q)        (dbce/dz = -q, dq/dz = -p_t q)

    so ``q ** (gamma - 1)`` never appears.

    Returns:
        ``(f, df/dx)``, shaped like ``x``.
    """
    z = tl.where(positive, x, -x)
    p_t, q, log1p_e = sigmoid_parts(z)
    bce = tl.maximum(-z, 0.0) + log1p_e
    if GAMMA_INT >= 0:
        q_pow_gamma, _ = q_powers(q, gamma, GAMMA_INT)
    else:
        q_pow_gamma = tl.exp2(-gamma * (tl.maximum(z, 0.0) + log1p_e) * LOG2E)
    df_dz = -q_pow_gamma * (gamma * p_t * bce + q)
    return q_pow_gamma * bce, tl.where(positive, df_dz, -df_dz)


@triton.jit
def sigmoid_focal_term(x, t, gamma, GAMMA_INT: tl.constexpr):
    """Sigmoid focal loss of one element with a soft target ``t`` in ``[0, 1]``, and its
    derivative, before ``alpha_t`` and weight.

    With ``p = sigmoid(x)``::

        q   = 1 - p_t = sigmoid(-x) t + sigmoid(x) (1 - t)     (no 1 - p_t cancellation)
        bce = max(x, 0) - x t + log1p(exp(-|x|))
        f   = q ** gamma * bce
        df/dx = gamma q ** (gamma - 1) dq bce + q ** gamma (p - t),   dq = p (1 - p) (1 - 2t)

    ``q ** (gamma - 1) dq`` is ``q ** gamma * (dq / q)`` with ``|dq / q| <= 1`` (``q >= p (1 - p)``),
    so it stays finite at saturated logits for every ``gamma >= 0``.

    ``bce`` takes ``x`` clamped to the finite floats: at ``x = +-inf`` its terms would be
    ``inf - inf`` or ``0 * inf`` (NaN), where a matching target (``+inf`` with 1, ``-inf`` with
    0) has ``bce = 0`` and gradient 0, as ``F.binary_cross_entropy_with_logits``'s. A target
    that does not match gets a loss of about ``FP32_MAX`` and BCE's gradient ``p - t``. NaN
    logits stay NaN. The clamp is one instruction on finite inputs (``FMNMX`` with NaN).

    Returns:
        ``(f, df/dx)``, shaped like ``x``.
    """
    p, p_neg, log1p_e = sigmoid_parts(x)
    q = p_neg * t + p * (1.0 - t)
    x_finite = finite_logit(x)
    bce = tl.maximum(x_finite, 0.0) - x_finite * t + log1p_e
    dq = (p * p_neg) * (1.0 - 2.0 * t)
    if GAMMA_INT >= 0:
        q_pow_gamma, q_pow_gamma_m1 = q_powers(q, gamma, GAMMA_INT)
        dq_term = q_pow_gamma_m1 * dq
    else:
        q_safe = tl.maximum(q, FP32_TINY)
        q_pow_gamma = tl.exp2(gamma * fast_log2(q_safe))
        dq_term = q_pow_gamma * tl.fdiv(dq, q_safe)
    return q_pow_gamma * bce, gamma * dq_term * bce + q_pow_gamma * (p - t)


@triton.jit
def sigmoid_focal_star_term(x, t, gamma):
    """FL* (RetinaNet appendix) of one element and its derivative, before ``alpha_t``.

    With ``s = 2t - 1`` and ``z = gamma x s``: ``f = softplus(-z) / gamma`` and
    ``df/dx = -sigmoid(-z) * gamma s / gamma = -s sigmoid(-z)`` (``gamma > 0``).

    Returns:
        ``(f, df/dx)``, shaped like ``x``.
    """
    s = 2.0 * t - 1.0
    z = gamma * x * s
    _, sigmoid_neg_z, log1p_e = sigmoid_parts(z)
    return (tl.maximum(-z, 0.0) + log1p_e) / gamma, -s * sigmoid_neg_z


@triton.jit
def row_softmax(x):
    """Softmax statistics of each row of a ``[ROWS, COLS]`` tile held whole in registers (short
    rows: distribution bins), whose padded columns are ``-inf``: ``(m, e, s)`` with ``m`` the row
    max, ``e = exp(x - m)`` per column (0 at ``-inf``) and ``s`` the row sum of ``e``, in
    ``[1, COLS]``. Then ``p = e / s`` and ``log-sum-exp = m + log s``; ``-log p_j = (m - x_j) +
    log s`` keeps full precision where ``p_j`` is near 1 (``m - x_j`` is then exact)."""
    m = tl.max(x, axis=1)
    e = tl.exp2((x - m[:, None]) * LOG2E)
    return m, e, tl.sum(e, axis=1)
