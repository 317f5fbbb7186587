"""The softmax focal loss's closed-form row math in torch: each row's loss and gradient, no autograd.

The derivation is written here once. The compile backend (``_compiled_math.py``), the
vocabulary-parallel loss (``distributed.py``) and the fused linear head's chunks on the
reference and compile backends (``fused_linear.py``) compute with these functions;
``reference.py`` states the same loss for autograd to differentiate, and is the oracle.

For a row of (softcapped) logits ``z`` over ``C`` classes, ``lse = logsumexp(z)``, a class's
``l_c = log p_c = z_c - lse`` and ``q_c = 1 - p_c``, the focal term ``f_c`` and its gradient
coefficient ``g_c`` are (:func:`focal_and_coef`)::

    f_c = q_c ** gamma * (-l_c)
    g_c = q_c ** gamma - gamma * p_c * l_c * q_c ** (gamma - 1) = q_c ** gamma * (1 - gamma * p_c * l_c / q_c)
    d f_c / d z_j = g_c * (p_j - [j == c])                        (from d l_c / d z_j = [j == c] - p_j)

and for a row with target ``y``, alpha ``a``, smoothing ``eps``, weight ``w`` and z-loss
coefficient ``k``::

    loss    = a * ((1 - eps) * w_y * f_y + eps / C * sum_c w_c f_c)  +  k * lse ** 2
    dL/dz_j = p_j * (s_f * G + s_z * 2 k lse) - [j == y] * s_f * a (1 - eps) w_y g_y
              - s_f * a * eps / C * w_j g_j,      G = a * ((1 - eps) w_y g_y + eps / C * sum_c w_c g_c)

where ``s_f`` and ``s_z`` are the reduction's scales of the focal and z parts (``1 / sum w_y``
and ``1 / rows`` for the mean, 0 for a mean over nothing: :func:`mean_scales`). ``softcap``
multiplies the gradient by ``1 - (z / softcap) ** 2``, the derivative of
``softcap * tanh(x / softcap)``.

Numerics, for every ``gamma >= 0``:

* ``q`` is never ``1 - p`` subtracted: it is ``-expm1(l)``, exact near ``p = 1``, or for the
  target the other classes' mass over the row's (``1 - p_y`` without cancellation near
  ``p_y = 1``, where ``z_y - lse`` has only absolute precision and ``l_y = log1p(-q_y)``).
* ``l / q`` tends to -1 as ``p -> 1`` (and is taken as -1 where ``q`` is 0), which keeps ``g``
  finite: the ``q ** (gamma - 1)`` of the first form is infinite there for ``gamma < 1``.
* A class at ``p = 0`` (a ``-inf`` logit) has ``f = inf`` and ``g = 1`` (``p l -> 0``): a
  ``-inf`` target gives an infinite loss with a finite gradient, as ``F.cross_entropy``; a
  masked non-target class adds 0 to the smoothing sums and to the gradient.

The steps, each a function of ``(T, V_r)`` logits that hold the classes ``[vocab_start,
vocab_start + V_r)`` of every row (all of them, or one rank's vocabulary shard):

1. :func:`shard_softmax_stats`, one read: the max ``m``, ``s = sum exp(z - m)``, the same sum
   without the target class and the target's ``z``; then ``lse = m + log s`` and
   :func:`target_focal_and_coef` gives ``f_y`` and ``g_y`` from ``q_y = s_other / s``;
2. :func:`shard_smoothing_sums` (label smoothing only): ``sum_c w_c f_c`` and ``sum_c w_c g_c``;
3. :func:`shard_focal_grad`: the gradient from per-row coefficients.

:func:`rows_focal_loss` runs them: as these torch functions on the reference backend,
compiled on the compile backend, as the Triton kernels with the same signatures on the Triton
backend (``triton_focal/ops/vocab_shard.py``); ``distributed.py`` completes the per-row sums
over the ranks between the steps.
"""

import warnings

import torch

from . import reference
from ._warnings import user_stacklevel

# --- numeric helpers (the compile backend's other losses use them too) ----------------------


def safe_ratio(num, den, where_zero):
    """``num / den``, and ``where_zero`` where ``den == 0`` (no NaN reaches a ``where``'s gradient:
    these functions are never differentiated, but the value itself must stay finite)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), where_zero)


def power(base, exponent):
    """``base ** exponent`` for ``base >= 0`` and an ``exponent >= 0`` (``0 ** 0 == 1``), as
    ``exp(exponent * log(base))``: Inductor's generic vectorized ``pow`` costs about twice that.
    The compiled functions pass a runtime tensor ``exponent``; a number serves too."""
    if not isinstance(exponent, torch.Tensor):
        return torch.ones_like(base) if exponent == 0 else torch.exp(exponent * torch.log(base))
    return torch.where(exponent == 0, torch.ones_like(base), torch.exp(exponent * torch.log(base)))


def mean_scale(denominator):
    """``1 / denominator``, and 0 where it is 0: the mean of nothing is 0 with a zero gradient."""
    return safe_ratio(torch.ones_like(denominator), denominator, torch.zeros_like(denominator))


def mean_scales(reduction, denominator, count):
    """The reduction's factors of the focal and z parts: ``1 / sum w_y`` and ``1 / rows`` for the
    mean (0 for a mean over nothing: every row ignored, or every present class weighted 0)."""
    if reduction != "mean":
        return 1.0, 1.0
    return mean_scale(denominator), mean_scale(count)


# --- a class's focal term -------------------------------------------------------------------


def focal_and_coef(log_p, gamma, one_minus_p=None):
    """``(f, g)`` of every element from its ``log p``: the focal term and its gradient coefficient
    (module docstring), finite for every ``gamma >= 0`` (a tensor that broadcasts, or a number).

    ``1 - p`` is ``one_minus_p`` where the caller has it without cancellation (the target's,
    from the other classes' mass), else ``-expm1(log p)``. ``p * l / (1 - p)`` is 0 where ``p``
    is 0: a ``-inf`` logit gives ``f = inf`` and ``g = 1``, which callers summing over the
    classes replace by 0 at a masked class.
    """
    p = torch.exp(log_p)
    one_minus_p = -torch.expm1(log_p) if one_minus_p is None else one_minus_p
    q_pow_gamma = power(one_minus_p, gamma)
    l_over_q = safe_ratio(log_p, one_minus_p, torch.full_like(log_p, -1.0))
    p_l_over_q = torch.where(p > 0, p * l_over_q, torch.zeros_like(p))
    return q_pow_gamma * -log_p, q_pow_gamma * (1 - gamma * p_l_over_q)


def target_focal_and_coef(z_target, lse, q_target, gamma):
    """``(f_y, g_y)`` of the target class from the row's statistics, all ``(T,)``.

    ``q_target = 1 - p_y`` comes from the other classes' mass; near ``p_y = 1`` the log is
    ``log1p(-q)``, not ``z_y - lse``. A ``-inf`` target logit gives ``f_y = inf`` (as
    ``F.cross_entropy``) and the limit ``g_y = 1``.
    """
    log_p = torch.where(q_target < 0.5, torch.log1p(-q_target), z_target - lse)
    return focal_and_coef(log_p, gamma, q_target)


# --- the steps over a row's classes ---------------------------------------------------------


def shard_softmax_stats(x, local_target, softcap):
    """Row statistics of one shard's logits, read once.

    Args:
        x: ``(T, V_r)`` logits of this shard, in the arithmetic dtype.
        local_target: ``(T,)`` target index within the shard, or ``-1`` where the target
            is elsewhere (or ignored).
        softcap: the cap ``c`` of ``c * tanh(x / c)``, or None.

    Returns:
        ``(m, s, s_other, z_target)``, each ``(T,)``: the max of the capped logits ``z``
        (at least the dtype's smallest finite number, so that an all-masked row keeps
        ``s = 0``), ``sum exp(z - m)``, that sum without the target class, and the target's
        ``z`` (0 where the target is not in this shard).
    """
    z = reference.softcap_logits(x, softcap)
    m = z.amax(dim=1).clamp_min(torch.finfo(z.dtype).min)
    e = torch.exp(z - m.unsqueeze(1))
    here = local_target >= 0
    index = local_target.clamp_min(0).unsqueeze(1)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    z_target = torch.where(here, z.gather(1, index).squeeze(1), zero)
    s = e.sum(dim=1)
    e.scatter_(1, index, torch.where(here.unsqueeze(1), zero, e.gather(1, index)))
    return m, s, e.sum(dim=1), z_target


def shard_smoothing_sums(x, lse, softcap, gamma, weight):
    """``(sum_c w_c f_c, sum_c w_c g_c)`` over this shard's classes, each ``(T,)``.

    ``gamma`` and ``weight`` are numbers or this shard's ``(V_r,)`` slices (weight None: 1).
    """
    f, g = _class_terms(reference.softcap_logits(x, softcap) - lse.unsqueeze(1), gamma, weight)
    return f.sum(dim=1), g.sum(dim=1)


def shard_focal_grad(x, lse, p_coef, target_coef, smooth_coef, local_target, softcap, gamma, weight):
    """The gradient of this shard's logits from per-row coefficients (formula in the module doc).

    Args:
        x: ``(T, V_r)`` logits in the arithmetic dtype.
        lse: ``(T,)`` global ``logsumexp`` of the capped logits.
        p_coef: ``(T,)`` multiplier of ``p_j``: ``s_f * G + s_z * 2 k lse``.
        target_coef: ``(T,)`` subtracted at the target class: ``s_f * a (1 - eps) w_y g_y``.
        smooth_coef: ``(T,)`` multiplier of ``w_j g_j``: ``s_f * a * eps / C``, or None
            without label smoothing.
        local_target: ``(T,)`` target index within the shard, ``-1`` where it is elsewhere.
        softcap, gamma, weight: as in :func:`shard_smoothing_sums`.

    Rows whose coefficients are all 0 (ignored rows) must be zeroed by the caller if their
    logits may be non-finite.

    Returns:
        ``(T, V_r)`` gradient with respect to ``x`` (through the softcap).
    """
    z = reference.softcap_logits(x, softcap)
    log_p = z - lse.unsqueeze(1)
    grad = torch.exp(log_p) * p_coef.unsqueeze(1)
    if smooth_coef is not None:
        _, g = _class_terms(log_p, gamma, weight)
        grad -= smooth_coef.unsqueeze(1) * g
    here = local_target >= 0
    index = local_target.clamp_min(0).unsqueeze(1)
    grad.scatter_add_(1, index, -torch.where(here, target_coef, torch.zeros_like(target_coef)).unsqueeze(1))
    if softcap is not None:
        grad *= 1.0 - (z / softcap) ** 2
    return grad


def _class_terms(log_p, gamma, weight):
    """``(w_c f_c, w_c g_c)`` of every class of a shard, 0 at a masked class (``p = 0``)."""
    f, g = focal_and_coef(log_p, gamma.unsqueeze(0) if isinstance(gamma, torch.Tensor) else gamma)
    masked = log_p == float("-inf")
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    f, g = torch.where(masked, zero, f), torch.where(masked, zero, g)
    if weight is not None:
        f, g = f * weight, g * weight
    return f, g


# --- each step's implementation per backend -------------------------------------------------

_SHARD_FUNCTIONS = {
    "shard_softmax_stats": shard_softmax_stats,
    "shard_smoothing_sums": shard_smoothing_sums,
    "shard_focal_grad": shard_focal_grad,
}
_compiled_shard_functions = {}


def _shard_function(name, backend):
    """The implementation of one step for ``backend``: the Triton kernels of
    ``triton_focal/ops/vocab_shard.py``, these torch functions compiled, or as they are."""
    function = _SHARD_FUNCTIONS[name]
    if backend == "triton":
        from .ops import vocab_shard

        return getattr(vocab_shard, name)
    if backend != "compile":
        return function
    if name not in _compiled_shard_functions:
        compiled = torch.compile(function, dynamic=True)
        announced = []

        def run(*args):
            if not announced:  # the first call compiles: say so, as the losses do
                announced.append(True)
                from .compiled import SKIP_HINT, CompileNotice

                warnings.warn(
                    f"triton_focal: compiling the fused head's row step {name} once for this process; {SKIP_HINT}",
                    CompileNotice,
                    stacklevel=user_stacklevel(),
                )
            try:
                return compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as err:  # no C++ compiler, unsupported device
                warnings.warn(
                    f"triton_focal: torch.compile cannot run here ({err}); using eager",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )
                _compiled_shard_functions[name] = function
                return function(*args)

        _compiled_shard_functions[name] = run
    return _compiled_shard_functions[name]


# --- a row's loss and gradient --------------------------------------------------------------


def _per_class_at(value, index, like):
    """A number, or a full ``(V,)`` tensor gathered at ``index`` (``(T,)``)."""
    return value[index] if isinstance(value, torch.Tensor) else torch.full_like(like, value)


def _slice(value, start, end):
    return value[start:end] if isinstance(value, torch.Tensor) else value


def rows_focal_loss(
    x,
    target,
    *,
    gamma,
    alpha,
    weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    backend,
    scale_focal,
    scale_z,
    need_grad,
    vocab_start=0,
    vocab_size=None,
    all_reduce=None,
):
    """Focal and z-loss of each row of ``(T, V_r)`` logits, and the scaled gradient, without autograd.

    The steps of the module docstring. ``x`` holds the whole vocabulary (the fused linear head's
    chunks), or with ``all_reduce`` one shard of it, whose per-row numbers ``all_reduce(tensor,
    "max" or "sum")`` combines in place over the shards (``distributed.py``).

    Args:
        x: ``(T, V_r)`` logits in the arithmetic dtype: classes ``[vocab_start,
            vocab_start + V_r)`` of ``vocab_size``.
        target: ``(T,)`` global class indices or ``ignore_index``.
        gamma, alpha, weight: numbers or full ``(V,)`` tensors (alpha, weight may be None).
        scale_focal, scale_z: what the focal and z parts of each row are multiplied by before
            differentiating (numbers, 0-dim or ``(T,)`` tensors).
        need_grad: also return the gradient.

    Returns:
        ``(focal_rows, z_rows, grad)``: ``(T,)`` unscaled parts, 0 on ignored rows, and the
        ``(T, V_r)`` gradient of ``sum(scale_focal * focal_rows + scale_z * z_rows)`` (None
        without ``need_grad``).
    """
    vocab_size = x.shape[1] if vocab_size is None else vocab_size
    vocab_end = vocab_start + x.shape[1]
    eps = label_smoothing
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    here = valid & (safe_target >= vocab_start) & (safe_target < vocab_end)
    local_target = torch.where(here, safe_target - vocab_start, torch.full_like(safe_target, -1))
    local_gamma, local_weight = _slice(gamma, vocab_start, vocab_end), _slice(weight, vocab_start, vocab_end)

    m, s, s_other, z_target = _shard_function("shard_softmax_stats", backend)(x, local_target, softcap)
    if all_reduce is not None:
        m_global = m.clone()
        all_reduce(m_global, "max")
        rescale = torch.exp(m - m_global)
        sums = torch.stack([s * rescale, s_other * rescale, z_target])
        all_reduce(sums, "sum")
        m, (s, s_other, z_target) = m_global, sums
    lse = m + torch.log(s)

    gamma_y = _per_class_at(gamma, safe_target, lse)
    alpha_y = _per_class_at(1.0 if alpha is None else alpha, safe_target, lse)
    w_y = _per_class_at(1.0 if weight is None else weight, safe_target, lse)
    f_y, g_y = target_focal_and_coef(z_target, lse, s_other / s, gamma_y)
    focal = (1.0 - eps) * w_y * f_y
    coef_g = (1.0 - eps) * w_y * g_y
    if eps > 0:
        sum_wf, sum_wg = _shard_function("shard_smoothing_sums", backend)(x, lse, softcap, local_gamma, local_weight)
        if all_reduce is not None:
            smooth = torch.stack([sum_wf, sum_wg])
            all_reduce(smooth, "sum")
            sum_wf, sum_wg = smooth
        focal = focal + (eps / vocab_size) * sum_wf
        coef_g = coef_g + (eps / vocab_size) * sum_wg
    zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
    focal_rows = torch.where(valid, alpha_y * focal, zero)
    z_rows = torch.where(valid, z_loss * lse * lse, zero) if z_loss > 0 else torch.zeros_like(lse)
    if not need_grad:
        return focal_rows, z_rows, None

    scale_f = scale_focal * alpha_y
    lse_safe = torch.where(valid, lse, zero)
    p_coef = torch.where(valid, scale_f * coef_g + scale_z * 2.0 * z_loss * lse_safe, zero)
    target_coef = torch.where(valid, scale_f * (1.0 - eps) * w_y * g_y, zero)
    smooth_coef = torch.where(valid, scale_f * (eps / vocab_size), zero) if eps > 0 else None
    grad = _shard_function("shard_focal_grad", backend)(
        x, lse_safe, p_coef, target_coef, smooth_coef, local_target, softcap, local_gamma, local_weight
    )
    return focal_rows, z_rows, grad.masked_fill_(~valid.unsqueeze(1), 0.0)
