"""The focal family's per-element sigmoid terms, each with its derivative: QFL, VFL, ASL, Poly-1.

``triton_focal/sigmoid_term.py`` states each term; here each is one ``@triton.jit`` helper
``(x, t, ...) -> (f, df/dx)`` on float32 (float64) tiles, built from the shared pieces of
``focal_math.py``. The kernel (``sigmoid_focal.py``) picks one by the ``TERM`` constexpr,
whose values are the indices of ``sigmoid_term.KINDS``.

Shared notation: ``s = sigmoid(x)``, ``s_neg = sigmoid(-x) = 1 - s``, ``ds/dx = s s_neg``,
``BCE(x, t) = max(x, 0) - x t + log1p(exp(-|x|))``, ``dBCE/dx = s - t``. The difference
``s - t`` is formed as ``s (1 - t) - s_neg t``: exact for hard targets, where ``1 - s``
would cancel. Powers of a base that can reach 0 are taken of the base clamped to the
smallest normal float (``FP32_TINY``), so ``0 ** 0 == 1`` and every derivative stays finite
for exponents below 1 (there the true derivative at the base's zero is infinite).
"""

import triton
import triton.language as tl

from .focal_math import FP32_TINY, LN2, LOG2E, fast_divide, fast_log2, finite_logit, q_powers, sigmoid_parts

FOCAL = tl.constexpr(0)
STAR = tl.constexpr(1)
QUALITY = tl.constexpr(2)
VARIFOCAL = tl.constexpr(3)
ASYMMETRIC = tl.constexpr(4)


@triton.jit
def _bce(x, t, log1p_e):
    """``BCE(x, t)`` with ``x`` clamped to the finite floats: an infinite logit with the
    matching hard target gives 0, not ``inf - inf`` (see ``focal_math.sigmoid_focal_term``)."""
    x_finite = finite_logit(x)
    return tl.maximum(x_finite, 0.0) - x_finite * t + log1p_e


@triton.jit
def _power(base, exponent, EXPONENT_INT: tl.constexpr):
    """``(base ** exponent, base ** (exponent - 1))`` for ``base`` in ``[0, 1]``: products for a
    small integer exponent, else ``exp2(exponent * log2(max(base, tiny)))``."""
    if EXPONENT_INT >= 0:
        return q_powers(base, exponent, EXPONENT_INT)
    safe = tl.maximum(base, FP32_TINY)
    power = tl.exp2(exponent * fast_log2(safe))
    return power, fast_divide(power, safe)


@triton.jit
def quality_focal_term(x, t, beta, BETA_INT: tl.constexpr):
    """QFL: ``f = BCE(x, t) * |s - t| ** beta``.

    ``df/dx = |d| ** beta * d + beta * |d| ** (beta - 1) * sign(d) * s s_neg * BCE`` with
    ``d = s - t``.
    """
    s, s_neg, log1p_e = sigmoid_parts(x)
    bce = _bce(x, t, log1p_e)
    d = s * (1.0 - t) - s_neg * t
    d_abs = tl.abs(d)
    mod, mod_m1 = _power(d_abs, beta, BETA_INT)
    sign = tl.where(d < 0, -1.0, 1.0)
    return mod * bce, mod * d + beta * mod_m1 * sign * (s * s_neg) * bce


@triton.jit
def varifocal_term(
    x, t, positive, alpha, gamma, GAMMA_INT: tl.constexpr, IOU_WEIGHTED: tl.constexpr, DETACH: tl.constexpr
):
    """VFL: ``f = BCE(x, t) * w``, ``w = t`` (1 without ``IOU_WEIGHTED``) where ``positive``,
    ``alpha * s ** gamma`` elsewhere.

    ``dw/dx = alpha * gamma * s ** gamma * s_neg`` on negatives (``s ** (gamma - 1) * s s_neg``,
    never formed), 0 on positives; ``DETACH`` drops it.
    """
    s, s_neg, log1p_e = sigmoid_parts(x)
    bce = _bce(x, t, log1p_e)
    if GAMMA_INT >= 0:
        s_pow, _ = q_powers(s, gamma, GAMMA_INT)
    else:
        # log s = -softplus(-x): no clamp, and exact where s underflows.
        log_s = -(tl.maximum(-x, 0.0) + log1p_e)
        s_pow = tl.exp2(gamma * log_s * LOG2E)
    negative_weight = alpha * s_pow
    if IOU_WEIGHTED:
        w = tl.where(positive, t, negative_weight)
    else:
        w = tl.where(positive, 1.0, negative_weight)
    grad = w * (s * (1.0 - t) - s_neg * t)
    if not DETACH:
        grad += tl.where(positive, 0.0, gamma * negative_weight * s_neg) * bce
    return w * bce, grad


@triton.jit
def asymmetric_term(
    x, t, gamma_pos, gamma_neg, clip, log_eps, HAS_CLIP: tl.constexpr, HAS_EPS: tl.constexpr, DETACH: tl.constexpr
):
    """ASL: ``f = -(t * L+ + (1 - t) * L-) * m`` with ``L+ = max(log s, log eps)``,
    ``L- = max(log(1 - s_m), log eps)``, ``s_m = max(s - clip, 0)``, and
    ``m = (t s_neg + (1 - t) s_m) ** (gamma_pos t + gamma_neg (1 - t))``.

    ``log s = -softplus(-x)`` and, without a clip, ``log(1 - s) = -softplus(x)``: exact where
    the source's ``log(1 - sigmoid(x))`` rounds ``1 - s`` to 0. With a clip, ``1 - s_m`` is
    ``s_neg + clip`` where ``s > clip`` (in ``[clip, 1]``: no cancellation, and ``lg2.approx``'s
    absolute error of ``2**-22`` there is far below the loss's) and 1 elsewhere. A clamped log
    has no gradient, as ``clamp`` gives none.
    """
    s, s_neg, log1p_e = sigmoid_parts(x)
    ds = s * s_neg
    log_s = -(tl.maximum(-x, 0.0) + log1p_e)
    if HAS_CLIP:
        shifted = s > clip
        s_m = tl.where(shifted, s - clip, 0.0)
        one_minus_s_m = tl.where(shifted, s_neg + clip, 1.0)
        log_neg = fast_log2(one_minus_s_m) * LN2
        d_s_m = tl.where(shifted, ds, 0.0)
        d_log_neg = -fast_divide(d_s_m, one_minus_s_m)
    else:
        s_m = s
        log_neg = -(tl.maximum(x, 0.0) + log1p_e)
        d_s_m = ds
        d_log_neg = -s
    d_log_s = s_neg
    if HAS_EPS:
        d_log_s = tl.where(log_s > log_eps, d_log_s, 0.0)
        d_log_neg = tl.where(log_neg > log_eps, d_log_neg, 0.0)
        log_s = tl.maximum(log_s, log_eps)
        log_neg = tl.maximum(log_neg, log_eps)
    base = -(t * log_s + (1.0 - t) * log_neg)
    d_base = -(t * d_log_s + (1.0 - t) * d_log_neg)
    one_minus_p_t = t * s_neg + (1.0 - t) * s_m
    exponent = gamma_pos * t + gamma_neg * (1.0 - t)
    mod, mod_m1 = _power(one_minus_p_t, exponent, -1)
    grad = mod * d_base
    if not DETACH:
        grad += exponent * mod_m1 * (-t * ds + (1.0 - t) * d_s_m) * base
    return mod * base, grad


@triton.jit
def poly_term(x, t, gamma, GAMMA_INT: tl.constexpr):
    """Poly-1's addition to the sigmoid focal loss, ``(1 - p_t) ** (gamma + 1)``, and its
    derivative ``(gamma + 1) (1 - p_t) ** gamma * p (1 - p) (1 - 2t)``."""
    s, s_neg, _ = sigmoid_parts(x)
    q = s_neg * t + s * (1.0 - t)
    q_pow_gamma, _ = _power(q, gamma, GAMMA_INT)
    return q_pow_gamma * q, (gamma + 1.0) * q_pow_gamma * (s * s_neg) * (1.0 - 2.0 * t)
