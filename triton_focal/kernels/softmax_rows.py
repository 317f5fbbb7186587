"""The per-row math of the softmax focal loss, shared by its kernels.

A *row* is one ``(n, p)`` and its ``C`` classes; each helper works on a vector of rows (one
value per row of a tile), whatever layout the kernel holds the classes in. The kernels
(``softmax_focal.py``: any number of classes in class steps; ``softmax_focal_one_read.py``: few
classes, held whole in registers) differ only in how they walk the classes; what a row's
statistics become (the loss, the gradient's coefficients) is written here once. The derivation
heads ``softmax_focal.py``.
"""

import triton
import triton.language as tl

from .focal_math import LN2, LOG2E, fast_log2, focal_term, join_float, q_powers, target_log_prob
from .grad_mode import GRAD_BACKWARD
from .params import row_ptr

# DIVISOR: what divides a reduced "sum" (a normalizer), read from denom_ptr or passed as a number.
DIVIDE_BY_TENSOR = tl.constexpr(1)
DIVIDE_BY_NUMBER = tl.constexpr(2)


@triton.jit
def reduction_scales(
    denom_ptr,
    divisor_hi,
    divisor_lo,
    MEAN: tl.constexpr,
    DIVISOR: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    ACC: tl.constexpr,
):
    """``(mean_scale, z_scale)``: what multiplies each row's focal and z-loss parts. The mean's
    divisors come from ``denom_ptr`` (the mean of nothing is 0, with a zero gradient); a
    normalizer divides every part alike."""
    mean_scale = 1.0
    z_scale = 1.0
    if MEAN:
        denom = tl.load(denom_ptr).to(ACC)
        mean_scale = tl.where(denom > 0, 1.0 / tl.where(denom > 0, denom, 1.0), 0.0)
        if HAS_Z_LOSS:
            z_denom = tl.load(denom_ptr + 1).to(ACC)
            z_scale = tl.where(z_denom > 0, 1.0 / tl.where(z_denom > 0, z_denom, 1.0), 0.0)
        else:
            z_scale = mean_scale
    if DIVISOR == DIVIDE_BY_TENSOR:  # a normalizer (mmdet's avg_factor)
        mean_scale = 1.0 / tl.load(denom_ptr).to(ACC)
        z_scale = mean_scale
    elif DIVISOR == DIVIDE_BY_NUMBER:
        mean_scale = 1.0 / join_float(divisor_hi, divisor_lo, ACC)
        z_scale = mean_scale
    return mean_scale, z_scale


@triton.jit
def row_targets(target, p_mask, ignore_index, C):
    """``(row_ok, row_bad, safe_target)`` of loaded class indices: the rows that count, those
    whose index is out of range (reachable only when the caller skipped validation: they get
    NaN), and an index safe to gather with (0 elsewhere)."""
    target = target.to(tl.int64)
    row_valid = p_mask & (target != ignore_index)
    in_range = (target >= 0) & (target < C)
    tl.device_assert(in_range | ~row_valid, "target class index out of range [0, C)")
    row_ok = row_valid & in_range
    return row_ok, row_valid & ~in_range, tl.where(row_ok, target, 0)


@triton.jit
def target_factors(
    gamma_ptr,
    alpha_ptr,
    weight_ptr,
    safe_target,
    gamma,
    alpha,
    HAS_CLASS_GAMMA: tl.constexpr,
    HAS_CLASS_ALPHA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
):
    """``(gamma_y, alpha_y, w_y)`` of each row's target class (the shared scalars, or one
    gather each from the per-class vectors)."""
    gamma_y = gamma
    alpha_y = alpha
    w_y = 1.0
    if HAS_CLASS_GAMMA:
        gamma_y = tl.load(gamma_ptr + safe_target)
    if HAS_CLASS_ALPHA:
        alpha_y = tl.load(alpha_ptr + safe_target)
    if HAS_WEIGHT:
        w_y = tl.load(weight_ptr + safe_target)
    return gamma_y, alpha_y, w_y


@triton.jit
def log_sum(s):
    """``log s`` for a softmax denominator ``s`` in ``[1, C]``: lg2.approx's 2**-22 absolute
    error is a relative error of 2**-22 in every ``p_j``."""
    return fast_log2(s) * LN2


@triton.jit
def target_term(x_y, m, s_other, gamma_y, GAMMA_INT: tl.constexpr):
    """``(log_s, q_y, p_y, f_y, g_y)`` of each row from its max ``m``, its target logit and
    ``s_other``, the sum of ``exp(x - m)`` over the other classes (so that ``q_y = 1 - p_y``
    has no cancellation)."""
    e_y = tl.exp2((x_y - m) * LOG2E)
    s = s_other + e_y
    log_s = log_sum(s)
    q_y = tl.fdiv(s_other, s)
    p_y, f_y, g_y = target_focal(x_y - m, log_s, q_y, gamma_y, GAMMA_INT)
    return log_s, q_y, p_y, f_y, g_y


@triton.jit
def target_focal(x_y_minus_m, log_s, q_y, gamma_y, GAMMA_INT: tl.constexpr):
    """``(p_y, f_y, g_y)`` of each row from ``x_y - m``, ``log s`` and ``q_y = 1 - p_y``."""
    log_p_y = target_log_prob(x_y_minus_m, log_s, q_y)
    p_y = tl.exp2(log_p_y * LOG2E)
    f_y, g_y = focal_term(log_p_y, p_y, q_y, gamma_y, GAMMA_INT)
    g_y = tl.where(p_y > 0, g_y, 1.0)  # a target at -inf: p log p -> 0 (F.cross_entropy's gradient)
    return p_y, f_y, g_y


@triton.jit
def poly_term(q, p, gamma, GAMMA_INT: tl.constexpr):
    """Poly-1's ``q ** (gamma + 1)`` and its gradient coefficient ``(gamma + 1) q ** gamma p``
    (``d q ** (gamma + 1) / d z_j = that * (p_j - [j == y])``), from the row's exact ``q = 1 - p``;
    no ``q ** (gamma - 1)`` is formed, so both stay finite for every ``gamma >= 0``."""
    q_pow_gamma, _ = q_powers(q, gamma, GAMMA_INT)
    return q_pow_gamma * q, (gamma + 1.0) * q_pow_gamma * p


@triton.jit
def row_loss(
    f_y,
    w_y,
    alpha_y,
    sum_w_f,
    poly_q,
    lse,
    v,
    row_ok,
    row_bad,
    mean_scale,
    z_scale,
    label_smoothing,
    poly_epsilon,
    z_loss,
    C,
    HAS_SMOOTHING: tl.constexpr,
    HAS_POLY: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    HAS_ELEMENT_WEIGHT: tl.constexpr,
):
    """Each row's loss, already divided by the mean's divisor (one sum then does it all); 0 for
    ignored rows, NaN for out-of-range targets. ``sum_w_f``: label smoothing's
    ``sum_c w_c f_c``; ``poly_q``: Poly-1's term; ``v``: the per-element weight."""
    loss = (1.0 - label_smoothing) * w_y * f_y
    if HAS_SMOOTHING:
        loss += (label_smoothing / C) * sum_w_f
    loss = alpha_y * loss
    if HAS_POLY:  # after alpha, as the PolyLoss paper's poly-1 focal loss
        loss += poly_epsilon * w_y * poly_q
    loss = loss * mean_scale
    if HAS_Z_LOSS:
        loss += z_loss * lse * lse * z_scale
    if HAS_ELEMENT_WEIGHT:
        loss = loss * v
    loss = tl.where(row_ok, loss, 0.0)
    return tl.where(row_bad, float("nan"), loss)


@triton.jit
def row_grad_scale(
    grad_scale,
    grad_out,
    n,
    p,
    p_mask,
    GRAD_MODE: tl.constexpr,
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    ACC: tl.constexpr,
):
    """What multiplies each row's gradient: a 0-dim ``grad_output`` (``grad_scale``), or a
    backward's per-element one, loaded from rows ``(n, p)`` of ``grad_out`` (``params.NP``)."""
    row_scale = grad_scale
    if GRAD_MODE == GRAD_BACKWARD:
        if not GRAD_OUT_IS_SCALAR:
            go = tl.load(row_ptr(grad_out, n, p), mask=p_mask, other=0.0)
            row_scale = row_scale * go.to(ACC)
    return row_scale


@triton.jit
def row_coefficients(
    row_scale,
    g_y,
    w_y,
    alpha_y,
    sum_w_g,
    poly_g,
    lse,
    v,
    row_ok,
    mean_scale,
    z_scale,
    label_smoothing,
    poly_epsilon,
    z_loss,
    C,
    HAS_SMOOTHING: tl.constexpr,
    HAS_POLY: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    HAS_ELEMENT_WEIGHT: tl.constexpr,
):
    """``(coef_y, coef_p, coef_smooth)`` of each row: its gradient is
    ``dloss/dz_j = coef_p p_j - coef_y [j == y] - coef_smooth w_j g_j``; 0 for ignored rows."""
    if HAS_ELEMENT_WEIGHT:
        row_scale = row_scale * v
    focal_scale = row_scale * mean_scale * alpha_y
    coef_y = focal_scale * (1.0 - label_smoothing) * w_y * g_y
    if HAS_POLY:
        coef_y += row_scale * mean_scale * poly_epsilon * w_y * poly_g
    coef_p = coef_y
    if HAS_Z_LOSS:
        coef_p += row_scale * z_scale * 2.0 * z_loss * lse
    coef_smooth = focal_scale * (label_smoothing / C)
    if HAS_SMOOTHING:
        coef_p += coef_smooth * sum_w_g  # the smoothing term's S_g p_j, folded per row
    return tl.where(row_ok, coef_y, 0.0), tl.where(row_ok, coef_p, 0.0), tl.where(row_ok, coef_smooth, 0.0)
