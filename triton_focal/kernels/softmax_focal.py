"""Triton kernels of the softmax focal loss: loss and gradient in one launch.

One kernel serves every layout. A program owns a tile ``[BLOCK_P, BLOCK_C]`` (positions x
classes) of one image ``n``; the element ``(n, c, p)`` of the logits sits at
``n * stride_n + c * stride_c + p * stride_p``. Channels-first segmentation logits have
``stride_p == 1``, so a tile's loads are coalesced along positions with no permute;
``(T, V)`` rows arrive folded by the launcher as one image of ``T`` positions with
``stride_c == 1``. The class axis (axis 1 of the tile) is the one reduced.

Derivation of the gradient (``l_c = log p_c``, ``q_c = 1 - p_c``, ``a``/``w`` the alpha and
weight vectors, ``eps`` the label smoothing)::

    f_c = q_c ** gamma_c * (-l_c)                               focal_term
    g_c = q_c ** gamma_c - gamma_c * p_c * l_c * q_c ** (gamma_c - 1)
    d f_c / d z_j = g_c * (p_j - [j == c])

    loss      = a_y * ((1 - eps) * w_y * f_y + (eps / C) * sum_c w_c f_c)
    dloss/dz_j = a_y * ((1 - eps) * w_y * g_y * (p_j - [j == y])
                        + (eps / C) * (S_g * p_j - w_j * g_j)),     S_g = sum_c w_c g_c

``p_y - 1`` is written as ``-q_y`` with ``q_y = s_other / s`` from the other classes' mass,
so the target's gradient keeps its precision when ``p_y`` is close to 1 (Liger PR #1329).
"""

import triton
import triton.language as tl

from .focal_math import focal_term, join_float, one_minus_exp, online_softmax_step, target_log_prob

# Largest finite float32: the running max starts here, not at -inf, so a row whose lanes
# are all masked keeps s == 0 instead of forming exp(-inf + inf).
FP32_MAX = tl.constexpr(3.4028234663852886e38)  # a constexpr object: compiled kernels may read it


@triton.jit
def _load_class_block(x_row_ptr, offs_c, stride_x_c, p_mask, target, row_ok, C, ACC: tl.constexpr):
    """One ``[BLOCK_P, BLOCK_C]`` block of logits in ``ACC``, masked lanes at ``-inf``.

    Returns:
        ``(x, mask, is_target)``, all ``[BLOCK_P, BLOCK_C]``.
    """
    c_mask = offs_c < C
    mask = p_mask[:, None] & c_mask[None, :]
    x = tl.load(x_row_ptr[:, None] + offs_c[None, :] * stride_x_c, mask=mask, other=-float("inf"))
    is_target = (offs_c[None, :] == target[:, None]) & row_ok[:, None]
    return x.to(ACC), mask, is_target


@triton.jit
def _class_probs(x, is_target, m, log_s, log_p_y, q_y):
    """``(log p, p, 1 - p)`` of a block; the target lane takes the row's exact values.

    ``log p = (x - m) - log s`` rather than ``x - lse``: at logits of 1e4 the float32
    ``lse`` has an absolute error of 1e-3, ``x - m`` none.
    """
    log_p = tl.where(is_target, log_p_y[:, None], (x - m[:, None]) - log_s[:, None])
    p = tl.exp(log_p)
    q = tl.where(is_target, q_y[:, None], one_minus_exp(log_p))
    return log_p, p, q


@triton.jit
def _class_params(gamma_ptr, weight_ptr, offs_c, C, gamma,
                  HAS_CLASS_GAMMA: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """Per-lane ``gamma_c`` and ``w_c`` as ``[1, BLOCK_C]`` (or scalars when shared)."""
    c_mask = offs_c < C
    if HAS_CLASS_GAMMA:
        gamma_c = tl.load(gamma_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
    else:
        gamma_c = gamma
    if HAS_WEIGHT:
        w_c = tl.load(weight_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
    else:
        w_c = 1.0
    return gamma_c, w_c


@triton.jit
def _smoothing_sums(x, mask, is_target, m, log_s, log_p_y, q_y, gamma_c, w_c):
    """Per-row ``sum_c w_c f_c`` and ``sum_c w_c g_c`` over one class block."""
    log_p, p, q = _class_probs(x, is_target, m, log_s, log_p_y, q_y)
    f, g = focal_term(log_p, p, q, gamma_c)
    # Masked lanes have log p = -inf (f = inf, g = NaN): keep them out of the sums.
    w_f = tl.sum(tl.where(mask, w_c * f, 0.0), axis=1)
    w_g = tl.sum(tl.where(mask, w_c * g, 0.0), axis=1)
    return w_f, w_g


@triton.jit
def _grad_block(x, is_target, m, log_s, log_p_y, q_y, gamma_c, w_c, coef_y, coef_smooth, sum_w_g,
                row_ok, row_bad, HAS_SMOOTHING: tl.constexpr):
    """The gradient of one class block (see the module docstring for the formula)."""
    log_p, p, q = _class_probs(x, is_target, m, log_s, log_p_y, q_y)
    # p_j - [j == y], with p_y - 1 = -q_y taken from the other classes' mass.
    grad = coef_y[:, None] * tl.where(is_target, -q_y[:, None], p)
    if HAS_SMOOTHING:
        f, g = focal_term(log_p, p, q, gamma_c)
        grad += coef_smooth[:, None] * (sum_w_g[:, None] * p - w_c * g)
    # Ignored rows (and rows past P, whose statistics are NaN) get 0; an out-of-range
    # target gets NaN rather than a silently wrong gradient.
    grad = tl.where(row_ok[:, None], grad, 0.0)
    return tl.where(row_bad[:, None], float("nan"), grad)


@triton.jit
def _softmax_focal_fwd_kernel(
    # pointers
    x_ptr,  # (N, C, P) logits, any float dtype
    target_ptr,  # (N, P) class indices, any int dtype
    gamma_ptr,  # (C,) float32 per-class gamma, read if HAS_CLASS_GAMMA
    alpha_ptr,  # (C,) float32 per-class alpha, read if HAS_CLASS_ALPHA
    weight_ptr,  # (C,) float32 class weights, read if HAS_WEIGHT
    denom_ptr,  # () mean's denominator (ACC dtype), read if MEAN and COMPUTE_GRAD
    loss_ptr,  # (N, P) in x's dtype if PER_ELEMENT, else (num_programs,) ACC partial sums
    grad_ptr,  # (N, C, P) in x's dtype, written if COMPUTE_GRAD
    # strides
    stride_x_n, stride_x_c, stride_x_p,
    stride_t_n, stride_t_p,
    stride_l_n, stride_l_p,
    stride_g_n, stride_g_c, stride_g_p,
    # sizes
    C, P, num_p_blocks,
    # scalars (runtime values: a new gamma or alpha does not recompile), floats as
    # float32 (hi, lo) halves so that float64 logits get them unrounded
    gamma_hi, gamma_lo, alpha_hi, alpha_lo, smoothing_hi, smoothing_lo,
    ignore_index,
    # constants
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,  # C <= BLOCK_C: the tile stays in registers
    HAS_CLASS_GAMMA: tl.constexpr,
    HAS_CLASS_ALPHA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    PER_ELEMENT: tl.constexpr,  # reduction="none"
    MEAN: tl.constexpr,  # reduction="mean": the stored gradient is divided by the denominator
    ACC: tl.constexpr,  # float32, or float64 for float64 logits
):
    gamma = join_float(gamma_hi, gamma_lo, ACC)
    alpha = join_float(alpha_hi, alpha_lo, ACC)
    label_smoothing = join_float(smoothing_hi, smoothing_lo, ACC)
    # 64-bit offsets: the program id is int64 before it meets a size or a stride.
    pid = tl.program_id(0).to(tl.int64)
    n = pid // num_p_blocks
    offs_p = (pid % num_p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    p_mask = offs_p < P
    x_row_ptr = x_ptr + n * stride_x_n + offs_p * stride_x_p  # [BLOCK_P]

    # 1. The target of each row and its per-class factors.
    target = tl.load(target_ptr + n * stride_t_n + offs_p * stride_t_p, mask=p_mask, other=ignore_index)
    target = target.to(tl.int64)
    row_valid = p_mask & (target != ignore_index)
    in_range = (target >= 0) & (target < C)
    tl.device_assert(in_range | ~row_valid, "target class index out of range [0, C)")
    row_ok = row_valid & in_range
    row_bad = row_valid & ~in_range  # only reachable when the caller skipped validation
    safe_target = tl.where(row_ok, target, 0)
    if HAS_CLASS_GAMMA:
        gamma_y = tl.load(gamma_ptr + safe_target).to(ACC)
    else:
        gamma_y = gamma
    if HAS_CLASS_ALPHA:
        alpha_y = tl.load(alpha_ptr + safe_target).to(ACC)
    else:
        alpha_y = alpha
    if HAS_WEIGHT:
        w_y = tl.load(weight_ptr + safe_target).to(ACC)
    else:
        w_y = 1.0

    # 2. Softmax statistics: running max m, sum s, and s_other without the target class.
    m = tl.full([BLOCK_P], -FP32_MAX, dtype=ACC)
    s = tl.zeros([BLOCK_P], dtype=ACC)
    s_other = tl.zeros([BLOCK_P], dtype=ACC)
    if SINGLE_BLOCK:
        x, mask, is_target = _load_class_block(x_row_ptr, offs_c0, stride_x_c, p_mask, target, row_ok, C, ACC)
        m, s, s_other = online_softmax_step(m, s, s_other, x, is_target)
        x_y = tl.sum(tl.where(is_target, x, 0.0), axis=1)
    else:
        for c_start in range(0, C, BLOCK_C):
            xb, maskb, is_tb = _load_class_block(
                x_row_ptr, c_start + offs_c0, stride_x_c, p_mask, target, row_ok, C, ACC
            )
            m, s, s_other = online_softmax_step(m, s, s_other, xb, is_tb)
        # One gather per row for the target logit (ignored rows read nothing).
        x_y = tl.load(x_row_ptr + safe_target * stride_x_c, mask=row_ok, other=0.0).to(ACC)
    log_s = tl.log(s)  # log-sum-exp is m + log_s, kept apart for precision
    q_y = s_other / s  # 1 - p_y without cancellation
    log_p_y = target_log_prob(x_y - m, log_s, q_y)
    f_y, g_y = focal_term(log_p_y, tl.exp(log_p_y), q_y, gamma_y)

    # 3. Label smoothing needs sum_c w_c f_c (loss) and S_g = sum_c w_c g_c (gradient).
    sum_w_f = tl.zeros([BLOCK_P], dtype=ACC)
    sum_w_g = tl.zeros([BLOCK_P], dtype=ACC)
    if HAS_SMOOTHING:
        if SINGLE_BLOCK:
            gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, offs_c0, C, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
            sum_w_f, sum_w_g = _smoothing_sums(x, mask, is_target, m, log_s, log_p_y, q_y, gamma_c, w_c)
        else:
            for c_start in range(0, C, BLOCK_C):
                offs_c = c_start + offs_c0
                xb, maskb, is_tb = _load_class_block(
                    x_row_ptr, offs_c, stride_x_c, p_mask, target, row_ok, C, ACC
                )
                gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, offs_c, C, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
                wf, wg = _smoothing_sums(xb, maskb, is_tb, m, log_s, log_p_y, q_y, gamma_c, w_c)
                sum_w_f += wf
                sum_w_g += wg

    # 4. The loss of each row: stored, or summed into this program's partial sum.
    loss = (1.0 - label_smoothing) * w_y * f_y
    if HAS_SMOOTHING:
        loss += (label_smoothing / C) * sum_w_f
    loss = tl.where(row_ok, alpha_y * loss, 0.0)
    loss = tl.where(row_bad, float("nan"), loss)
    if PER_ELEMENT:
        loss_offs = n * stride_l_n + offs_p * stride_l_p
        tl.store(loss_ptr + loss_offs, loss.to(loss_ptr.dtype.element_ty), mask=p_mask)
    else:
        tl.store(loss_ptr + pid, tl.sum(loss, axis=0))

    # 5. The gradient, scaled for the mean (0 when every element is ignored: no NaN).
    if COMPUTE_GRAD:
        scale = 1.0
        if MEAN:
            denom = tl.load(denom_ptr).to(ACC)
            scale = tl.where(denom > 0, 1.0 / tl.where(denom > 0, denom, 1.0), 0.0)
        coef_y = alpha_y * (1.0 - label_smoothing) * w_y * g_y * scale
        coef_smooth = alpha_y * (label_smoothing / C) * scale + tl.zeros([BLOCK_P], dtype=ACC)
        g_row_ptr = grad_ptr + n * stride_g_n + offs_p * stride_g_p  # [BLOCK_P]
        if SINGLE_BLOCK:
            gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, offs_c0, C, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
            grad = _grad_block(x, is_target, m, log_s, log_p_y, q_y, gamma_c, w_c, coef_y, coef_smooth,
                               sum_w_g, row_ok, row_bad, HAS_SMOOTHING)
            tl.store(g_row_ptr[:, None] + offs_c0[None, :] * stride_g_c,
                     grad.to(grad_ptr.dtype.element_ty), mask=mask)
        else:
            # Second read of the logits; with inplace_grad the gradient overwrites each block
            # after this program's last read of it.
            for c_start in range(0, C, BLOCK_C):
                offs_c = c_start + offs_c0
                xb, maskb, is_tb = _load_class_block(
                    x_row_ptr, offs_c, stride_x_c, p_mask, target, row_ok, C, ACC
                )
                gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, offs_c, C, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
                grad = _grad_block(xb, is_tb, m, log_s, log_p_y, q_y, gamma_c, w_c, coef_y, coef_smooth,
                                   sum_w_g, row_ok, row_bad, HAS_SMOOTHING)
                tl.store(g_row_ptr[:, None] + offs_c[None, :] * stride_g_c,
                         grad.to(grad_ptr.dtype.element_ty), mask=maskb)
