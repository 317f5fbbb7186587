"""Vocabulary-parallel focal loss: the head's logits sharded over ``torch.distributed`` ranks.

Each rank holds ``(T, V_r)`` logits for its contiguous slice of the vocabulary (Megatron's
column-parallel ``lm_head``; the slices may be uneven) and the full ``(T,)`` targets. The
loss and gradient equal those of :func:`triton_focal.focal_loss` on the unsharded
``(T, V)`` logits, while only a few numbers per row cross the network, never logits:

1. each rank reads its shard once for the row statistics of the (softcapped) logits;
2. ``all_reduce(MAX)`` of the max, a per-row rescale of the sums, ``all_reduce(SUM)`` of the
   three others: every rank now knows ``lse`` and the target's focal term and coefficient;
3. label smoothing only: each rank sums ``w_c f_c`` and ``w_c g_c`` over its classes, and one
   more ``all_reduce(SUM)`` completes them;
4. each rank writes the gradient of its slice from per-row coefficients.

The math and the steps' functions: see ``_row_math`` (``rows_focal_loss``); this module adds
the collectives between the steps. The same code runs over NCCL on GPUs.
"""

import functools
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _validation, backends, reference
from ._row_math import mean_scales, rows_focal_loss

# --- the collective forward/backward --------------------------------------------------------


def _gather_shard_sizes(num_local, device, group):
    """Every rank's vocabulary slice size (one small ``all_gather``; a host sync)."""
    world = dist.get_world_size(group)
    local = torch.tensor([num_local], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return [int(size) for size in torch.cat(sizes).tolist()]


def _all_reduce(tensor, op, group):
    """``all_reduce`` of ``tensor`` in place over ``group``, ``op`` ``"max"`` or ``"sum"``: how
    :func:`rows_focal_loss` combines the shards' per-row numbers."""
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)


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
        all_reduce=functools.partial(_all_reduce, group=group),
        backend=name,
    )
    loss, z_part = _VocabParallelFocal.apply(rows, flat_target, settings, denominator, count)
    if reduction == "none":
        loss, z_part = loss.reshape(target.shape), z_part.reshape(target.shape)
    return (loss, z_part) if return_z_loss else loss
