"""Vocabulary-parallel focal loss: the head's logits sharded over ``torch.distributed`` ranks.

Each rank holds ``(T, V_r)`` logits for its contiguous slice of the vocabulary (Megatron's
column-parallel ``lm_head``; the slices may be uneven) and the full ``(T,)`` targets. The
loss and gradient equal those of :func:`triton_focal.focal_loss` on the unsharded
``(T, V)`` logits, while only a few numbers per row cross the network, never logits:

1. each rank reads its shard once for the row statistics of the (softcapped) logits ``z``:
   the max ``m_r``, ``s_r = sum exp(z - m_r)``, the same sum without the target class
   (``1 - p_y`` comes from the other classes' mass, with no cancellation near ``p_y = 1``)
   and the target logit where the target falls in the shard;
2. ``all_reduce(MAX)`` of ``m``, a per-row rescale of the sums, ``all_reduce(SUM)`` of the
   three others: every rank now knows ``lse`` and the target's focal term ``f_y`` and its
   gradient coefficient ``g_y``;
3. label smoothing only: each rank sums ``w_c f_c`` and ``w_c g_c`` over its classes, and one
   more ``all_reduce(SUM)`` completes them;
4. each rank writes the gradient of its slice from per-row coefficients.

The math, with ``f_c = (1 - p_c) ** gamma * (-log p_c)`` and
``g_c = (1 - p_c) ** gamma - gamma * p_c * log p_c * (1 - p_c) ** (gamma - 1)``
(``d f_c / d z_j = g_c * (p_j - [j == c])``), for a row with target ``y``, alpha ``a``,
smoothing ``eps`` over ``C`` classes, weight ``w`` and z-loss coefficient ``k``::

    loss   = a * ((1 - eps) * w_y * f_y + eps / C * sum_c w_c f_c)  +  k * lse ** 2
    dL/dz_j = p_j * (s_f * G + s_z * 2 k lse) - [j == y] * s_f * a (1 - eps) w_y g_y
              - s_f * a * eps / C * w_j g_j,      G = a * ((1 - eps) w_y g_y + eps / C * sum_c w_c g_c)

where ``s_f`` and ``s_z`` are the reduction's scales of the focal and z parts (``1 / sum w_y``
and ``1 / rows`` for the mean). ``softcap`` multiplies the gradient by
``1 - (z / softcap) ** 2``, the derivative of ``softcap * tanh(x / softcap)``.

Steps 1, 3 and 4 are :func:`shard_softmax_stats`, :func:`shard_smoothing_sums` and
:func:`shard_focal_grad`: small torch functions for the reference backend (``compile``
compiles them), and Triton kernels with the same signatures for the Triton backend
(``triton_focal/ops/vocab_shard.py``). The same code runs over NCCL on GPUs. Without
sharding, :func:`rows_focal_loss` is also the closed-form loss and gradient of the fused linear
head's chunks on the reference and compile backends (no autograd graph per chunk).
"""

import warnings
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _validation, backends, reference
from ._compiled_math import mean_scale
from ._warnings import user_stacklevel

# --- the per-shard math: statistics, smoothing sums, gradient -------------------------------


def focal_term(log_p, gamma):
    """``(f, g)`` of every class from its ``log p`` (``gamma`` a number or broadcastable tensor).

    A class with ``p = 0`` (a ``-inf`` logit, a masked class) gives ``f = g = 0``: its
    ``(1 - p) ** gamma * log p`` is ``-inf``, and a masked class contributes nothing to the
    smoothing term. ``1 - p`` is ``-expm1(log p)``, exact near ``p = 1``.
    """
    p = torch.exp(log_p)
    q = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
    q_pow_gamma = q**gamma
    f = -q_pow_gamma * log_p
    g = q_pow_gamma - gamma * p * log_p * (q_pow_gamma / q)
    masked = log_p == float("-inf")
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    return torch.where(masked, zero, f), torch.where(masked, zero, g)


def target_focal_term(z_target, lse, q_target, gamma):
    """``(f_y, g_y)`` of the target class from the row's statistics, all ``(T,)``.

    ``q_target = 1 - p_y`` comes from the other classes' mass. Near ``p_y = 1`` the
    difference ``z_y - lse`` has only absolute precision, so ``log p_y = log1p(-q)`` there.
    A ``-inf`` target logit gives ``f_y = inf`` (as ``F.cross_entropy``) and the limit
    ``g_y = 1``.
    """
    log_p = torch.where(q_target < 0.5, torch.log1p(-q_target), z_target - lse)
    p = torch.exp(log_p)
    q = q_target.clamp_min(torch.finfo(q_target.dtype).tiny)
    q_pow_gamma = q**gamma
    f = -q_pow_gamma * log_p
    g = torch.where(p > 0, q_pow_gamma - gamma * p * log_p * (q_pow_gamma / q), torch.ones_like(p))
    return f, g


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
    log_p = reference.softcap_logits(x, softcap) - lse.unsqueeze(1)
    f, g = focal_term(log_p, _row_vector(gamma))
    if weight is not None:
        f, g = f * weight, g * weight
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
        _, g = focal_term(log_p, _row_vector(gamma))
        if weight is not None:
            g = g * weight
        grad -= smooth_coef.unsqueeze(1) * g
    here = local_target >= 0
    index = local_target.clamp_min(0).unsqueeze(1)
    grad.scatter_add_(1, index, -torch.where(here, target_coef, torch.zeros_like(target_coef)).unsqueeze(1))
    if softcap is not None:
        grad *= 1.0 - (z / softcap) ** 2
    return grad


def _row_vector(value):
    """A per-class ``(V_r,)`` tensor as a ``(1, V_r)`` row for broadcasting; numbers pass through."""
    return value.unsqueeze(0) if isinstance(value, torch.Tensor) else value


_SHARD_FUNCTIONS = {
    "shard_softmax_stats": shard_softmax_stats,
    "shard_smoothing_sums": shard_smoothing_sums,
    "shard_focal_grad": shard_focal_grad,
}
_compiled_shard_functions = {}


def _shard_function(name, backend):
    """The implementation of one per-shard step for ``backend``: the Triton kernels of
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


# --- the collective forward/backward --------------------------------------------------------


def _gather_shard_sizes(num_local, device, group):
    """Every rank's vocabulary slice size (one small ``all_gather``; a host sync)."""
    world = dist.get_world_size(group)
    local = torch.tensor([num_local], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return [int(size) for size in torch.cat(sizes).tolist()]


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
    group=None,
    sharded=False,
):
    """Focal and z-loss of each row of ``(T, V_r)`` logits, and the scaled gradient, without autograd.

    The steps of the module docstring; with ``sharded`` the rows' statistics are combined
    over ``group``, else ``x`` holds the whole vocabulary (the fused linear head's chunks).

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
    if sharded:
        m_global = m.clone()
        dist.all_reduce(m_global, op=dist.ReduceOp.MAX, group=group)
        rescale = torch.exp(m - m_global)
        sums = torch.stack([s * rescale, s_other * rescale, z_target])
        dist.all_reduce(sums, group=group)
        m, (s, s_other, z_target) = m_global, sums
    lse = m + torch.log(s)

    gamma_y = _per_class_at(gamma, safe_target, lse)
    alpha_y = _per_class_at(1.0 if alpha is None else alpha, safe_target, lse)
    w_y = _per_class_at(1.0 if weight is None else weight, safe_target, lse)
    f_y, g_y = target_focal_term(z_target, lse, s_other / s, gamma_y)
    focal = (1.0 - eps) * w_y * f_y
    coef_g = (1.0 - eps) * w_y * g_y
    if eps > 0:
        sum_wf, sum_wg = _shard_function("shard_smoothing_sums", backend)(x, lse, softcap, local_gamma, local_weight)
        if sharded:
            smooth = torch.stack([sum_wf, sum_wg])
            dist.all_reduce(smooth, group=group)
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


def mean_scales(reduction, denominator, count):
    """The reduction's factors of the focal and z parts: ``1 / sum w_y`` and ``1 / rows`` for the
    mean (0 for a mean over nothing: every row ignored, or every present class weighted 0)."""
    if reduction != "mean":
        return 1.0, 1.0
    return mean_scale(denominator), mean_scale(count)


class _VocabParallelFocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, settings, denominator, count):
        settings = dict(settings)
        reduction = settings.pop("reduction")
        input_dtype = x.dtype
        scale_focal, scale_z = (1.0, 1.0) if reduction == "none" else mean_scales(reduction, denominator, count)
        focal_rows, z_rows, grad = rows_focal_loss(
            x.to(reference.compute_dtype(x.dtype)),
            target,
            scale_focal=scale_focal,
            scale_z=scale_z,
            need_grad=ctx.needs_input_grad[0],
            sharded=True,
            **settings,
        )
        if reduction == "none":
            loss, z_part = focal_rows + z_rows, z_rows
        else:
            z_part = z_rows.sum() * scale_z
            loss = focal_rows.sum() * scale_focal + z_part
        ctx.reduction = reduction
        if grad is not None:
            ctx.save_for_backward(grad.to(input_dtype))
        ctx.mark_non_differentiable(z_part)
        return loss.to(input_dtype), z_part.to(input_dtype)

    @staticmethod
    def backward(ctx, grad_output, _grad_z_part):
        (grad,) = ctx.saved_tensors
        scale = grad_output.unsqueeze(1) if ctx.reduction == "none" else grad_output
        return grad * scale.to(grad.dtype), None, None, None, None


def vocab_parallel_focal_loss(
    logits_shard: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Optional["dist.ProcessGroup"] = None,
    gamma: Union[float, torch.Tensor] = 2.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    backend: str = "auto",
    return_z_loss: bool = False,
):
    """Focal loss of logits whose vocabulary is split over the ranks of ``group``.

    Every rank calls it with its own shard; every rank gets the loss of the whole vocabulary,
    equal to :func:`triton_focal.focal_loss` of the concatenated logits, and the gradient of
    its own shard. Ranks hold contiguous slices in rank order (rank 0 the first classes);
    the slices may differ in size.

    Args:
        logits_shard: ``(T, V_r)`` or ``(B, S, V_r)``: this rank's classes in the last
            dimension.
        target: ``logits_shard``'s shape without the last dimension: global class indices in
            ``[0, V)`` or ``ignore_index``, the same on every rank.
        group: the tensor-parallel process group (default: the world).
        gamma, alpha, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
            backend: as in :func:`triton_focal.focal_loss`; per-class tensors cover the full
            vocabulary ``(V,)`` and are the same on every rank.
        return_z_loss: also return the z-loss part of the loss (detached), for logging.

    Returns:
        The loss (``target``'s shape for ``reduction="none"``), and with ``return_z_loss``
        the pair ``(loss, z_part)``.

    Raises:
        ValueError / TypeError: bad arguments, named (checked on every rank).
    """
    _validation.check_logits(logits_shard)
    if logits_shard.dim() < 2:
        raise ValueError(f"logits_shard must be (T, V_r) or (B, S, V_r), got shape {tuple(logits_shard.shape)}")
    if not isinstance(target, torch.Tensor) or target.shape != logits_shard.shape[:-1]:
        raise ValueError(
            f"target must have logits_shard's shape without the last dimension, {tuple(logits_shard.shape[:-1])}, "
            f"got {tuple(getattr(target, 'shape', ()))}"
        )
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("vocab_parallel_focal_loss needs torch.distributed initialized (init_process_group)")
    rows = logits_shard.reshape(-1, logits_shard.shape[-1])
    flat_target = target.reshape(-1)
    sizes = _gather_shard_sizes(rows.shape[1], rows.device, group)
    rank = dist.get_rank(group)
    vocab_start, vocab_size = sum(sizes[:rank]), sum(sizes)
    # Check everything against the full (T, V) shape without making it.
    probe = rows.new_empty(1, 1).expand(rows.shape[0], vocab_size)
    args = _validation.softmax_args(
        probe, flat_target, gamma, alpha, weight, ignore_index, reduction, label_smoothing, False, z_loss, softcap
    )
    name = backends.resolve(backend, rows.device)
    # The shard steps compute alpha, weight and gamma without an autograd graph.
    _validation.refuse_learnable(
        "vocab_parallel_focal_loss",
        hint="pass it detached (.detach())",
        alpha=args.alpha,
        weight=args.weight,
        gamma=args.gamma,
    )
    flat_target = args.target.reshape(flat_target.shape)  # int64 where its dtype cannot hold ignore_index
    dtype = reference.compute_dtype(rows.dtype)
    denominator = reference.softmax_mean_denominator(flat_target, args.weight, args.ignore_index, dtype)
    count = (flat_target != args.ignore_index).sum(dtype=dtype)
    settings = dict(
        vocab_start=vocab_start,
        vocab_size=vocab_size,
        gamma=args.gamma,
        alpha=args.alpha,
        weight=args.weight,
        ignore_index=args.ignore_index,
        reduction=args.reduction,
        label_smoothing=args.label_smoothing,
        z_loss=args.z_loss,
        softcap=args.softcap,
        group=group,
        backend=name,
    )
    loss, z_part = _VocabParallelFocal.apply(rows, flat_target, settings, denominator, count)
    if reduction == "none":
        loss, z_part = loss.reshape(target.shape), z_part.reshape(target.shape)
    return (loss, z_part) if return_z_loss else loss
