"""Triton kernels of the vocabulary-parallel steps (``triton_focal/_row_math.py``).

One shard holds ``(T, V_r)`` logits, a slice of every row's classes; the row statistics are
combined across ranks between the steps, so each step is its own launch:

* ``_shard_stats_kernel``: per row, the max ``m`` of the (softcapped) logits, ``s = sum
  exp(z - m)``, the same sum without the target class, and the target's logit (0 where
  the target is on another rank): one read of the shard;
* ``_shard_smoothing_kernel``: per row, ``sum_c w_c f_c`` and ``sum_c w_c g_c`` (label
  smoothing only);
* ``_shard_grad_kernel``: the gradient ``p_j p_coef - [j == y] target_coef - smooth_coef
  w_j g_j``, times ``1 - (z_j / c) ** 2`` under a softcap, from the global ``lse`` and
  per-row coefficients.

A program owns one row and steps over its classes ``BLOCK_V`` at a time. The math is
``focal_math.py``'s.
"""

import triton
import triton.language as tl

from .focal_math import FP32_MAX, LOG2E, focal_term, join_float, one_minus_exp, softcap_logits


@triton.jit
def _load_row_block(x_row, cols, stride_v, V, softcap, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr):
    """Logits ``z`` of one block of a row (classes ``stride_v`` apart), in ``ACC``; masked
    lanes at ``-inf``. The kernels pass ``stride_v`` as int64, widened once per program:
    ``V * stride_v`` passes 2**31 in a transposed ``(T, V)`` view."""
    mask = cols < V
    z = tl.load(x_row + cols * stride_v, mask=mask, other=-float("inf")).to(ACC)
    if HAS_SOFTCAP:
        z = tl.where(mask, softcap_logits(z, softcap), -float("inf"))
    return z


@triton.jit
def _class_focal(
    z, lse, gamma_ptr, weight_ptr, cols, V, gamma, HAS_CLASS_GAMMA: tl.constexpr, HAS_WEIGHT: tl.constexpr
):
    """``(p, w f, w g)`` of a block; a class at ``-inf`` (masked) gives ``f = g = 0``."""
    log_p = z - lse
    p = tl.exp2(log_p * LOG2E)
    if HAS_CLASS_GAMMA:
        gamma = tl.load(gamma_ptr + cols, mask=cols < V, other=0.0)
    f, g = focal_term(log_p, p, one_minus_exp(log_p), gamma)
    present = z > -float("inf")
    f = tl.where(present, f, 0.0)
    g = tl.where(present, g, 0.0)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + cols, mask=cols < V, other=0.0)
        f = w * f
        g = w * g
    return p, f, g


@triton.jit
def _shard_stats_kernel(
    x_ptr,
    target_ptr,
    m_ptr,
    s_ptr,
    s_other_ptr,
    z_target_ptr,  # (T, V_r), (T,) local target or -1, 4 x (T,)
    stride_x_t,
    stride_x_v,
    V,
    softcap_hi,
    softcap_lo,  # floats as float32 (hi, lo) halves (ops/scalars.py)
    BLOCK_V: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    ACC: tl.constexpr,
):
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_t
    stride_x_v = tl.cast(stride_x_v, tl.int64)  # see _load_row_block
    target = tl.load(target_ptr + row)
    offs = tl.arange(0, BLOCK_V)
    # Online softmax; the max starts at the lowest finite float32, so an all-masked row
    # keeps s == 0 instead of forming exp(-inf + inf).
    m = tl.full([], -FP32_MAX, ACC)
    s = tl.zeros([], ACC)
    s_other = tl.zeros([], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        z = _load_row_block(x_row, cols, stride_x_v, V, softcap, HAS_SOFTCAP, ACC)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp2((m - m_new) * LOG2E)
        e = tl.exp2((z - m_new) * LOG2E)
        s = s * rescale + tl.sum(e, axis=0)
        s_other = s_other * rescale + tl.sum(tl.where(cols == target, 0.0, e), axis=0)
        m = m_new
    here = target >= 0
    z_target = _load_row_block(x_row, tl.where(here, target, 0), stride_x_v, V, softcap, HAS_SOFTCAP, ACC)
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(s_other_ptr + row, s_other)
    tl.store(z_target_ptr + row, tl.where(here, z_target, 0.0))


@triton.jit
def _shard_smoothing_kernel(
    x_ptr,
    lse_ptr,
    gamma_ptr,
    weight_ptr,
    sum_wf_ptr,
    sum_wg_ptr,
    stride_x_t,
    stride_x_v,
    V,
    softcap_hi,
    softcap_lo,
    gamma_hi,
    gamma_lo,
    BLOCK_V: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_CLASS_GAMMA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    ACC: tl.constexpr,
):
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    gamma = join_float(gamma_hi, gamma_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_t
    stride_x_v = tl.cast(stride_x_v, tl.int64)  # see _load_row_block
    lse = tl.load(lse_ptr + row).to(ACC)
    offs = tl.arange(0, BLOCK_V)
    sum_wf = tl.zeros([], ACC)
    sum_wg = tl.zeros([], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        z = _load_row_block(x_row, cols, stride_x_v, V, softcap, HAS_SOFTCAP, ACC)
        _, wf, wg = _class_focal(z, lse, gamma_ptr, weight_ptr, cols, V, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
        sum_wf += tl.sum(wf, axis=0)
        sum_wg += tl.sum(wg, axis=0)
    tl.store(sum_wf_ptr + row, sum_wf)
    tl.store(sum_wg_ptr + row, sum_wg)


@triton.jit
def _shard_grad_kernel(
    x_ptr,
    target_ptr,
    lse_ptr,
    p_coef_ptr,
    target_coef_ptr,
    smooth_coef_ptr,
    gamma_ptr,
    weight_ptr,
    grad_ptr,
    stride_x_t,
    stride_x_v,
    stride_g_t,
    stride_g_v,
    V,
    softcap_hi,
    softcap_lo,
    gamma_hi,
    gamma_lo,
    BLOCK_V: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_CLASS_GAMMA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    ACC: tl.constexpr,
):
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    gamma = join_float(gamma_hi, gamma_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_t
    g_row = grad_ptr + row * stride_g_t
    # See _load_row_block: 64-bit class offsets.
    stride_x_v = tl.cast(stride_x_v, tl.int64)
    stride_g_v = tl.cast(stride_g_v, tl.int64)
    target = tl.load(target_ptr + row)
    lse = tl.load(lse_ptr + row).to(ACC)
    p_coef = tl.load(p_coef_ptr + row).to(ACC)
    target_coef = tl.load(target_coef_ptr + row).to(ACC)
    if HAS_SMOOTHING:
        smooth_coef = tl.load(smooth_coef_ptr + row).to(ACC)
    offs = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        z = _load_row_block(x_row, cols, stride_x_v, V, softcap, HAS_SOFTCAP, ACC)
        p, _, wg = _class_focal(z, lse, gamma_ptr, weight_ptr, cols, V, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
        grad = p * p_coef - tl.where(cols == target, target_coef, 0.0)
        if HAS_SMOOTHING:
            grad -= smooth_coef * wg
        if HAS_SOFTCAP:
            tanh = z / softcap
            grad = grad * (1.0 - tanh * tanh)
        tl.store(g_row + cols * stride_g_v, grad.to(grad_ptr.dtype.element_ty), mask=cols < V)
