"""Focal loss of a linear head without holding the full logits: large vocabularies.

``fused_linear_focal_loss(hidden, lm_weight, target)`` equals
``focal_loss(hidden @ lm_weight.T + bias, target)``, but the ``(T, V)`` logits only ever
exist one chunk of rows at a time. Each chunk's logits are made, turned into their loss
and gradient by the chosen backend (the Triton kernel computes both in one pass), and
folded at once into the gradients of ``hidden``, ``lm_weight`` and ``bias``; peak memory
is one chunk of logits and its gradient instead of two ``(T, V)`` tensors.

For ``reduction="sum"`` and ``"mean"`` the gradients are made in the forward pass and only
scaled by ``grad_output`` in backward. For ``"none"`` the per-token ``grad_output`` is
needed before the weight gradient can be summed, so backward recomputes the chunks.
"""

import torch

from . import _validation, reference
from .functional import focal_loss

# Rows per chunk keep one chunk of logits near 2**26 elements (128 MiB in bf16) at V = 128k.
CHUNK_ELEMENTS = 2**26


def _chunks(num_rows, vocab, chunk_size):
    size = chunk_size or max(1, min(num_rows, CHUNK_ELEMENTS // max(vocab, 1)))
    return [(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def _fold_chunks(hidden, lm_weight, bias, target, focal_kwargs, chunk_size, row_scale, need_grad):
    """Loss of every chunk and, if ``need_grad``, the gradients it induces.

    ``row_scale`` is what the summed (or per-row) loss is multiplied by before
    differentiating: a scalar, or a ``(T,)`` tensor of per-token grad_output.
    Returns ``(loss_sum or per-row loss, grad_hidden, grad_weight, grad_bias)``.
    """
    per_row = focal_kwargs["reduction"] == "none"
    accumulate = reference.compute_dtype(hidden.dtype)
    losses = []
    grad_hidden = torch.empty_like(hidden) if need_grad else None
    grad_weight = torch.zeros_like(lm_weight, dtype=accumulate) if need_grad else None
    grad_bias = torch.zeros_like(bias, dtype=accumulate) if need_grad and bias is not None else None
    for start, end in _chunks(hidden.shape[0], lm_weight.shape[0], chunk_size):
        rows = hidden[start:end]
        with torch.enable_grad():
            logits = rows @ lm_weight.t()
            if bias is not None:
                logits = logits + bias
            logits = logits.detach().requires_grad_(need_grad)
            loss = focal_loss(logits, target[start:end], **focal_kwargs)
            if need_grad:
                scale = row_scale[start:end] if isinstance(row_scale, torch.Tensor) and per_row else row_scale
                (grad_logits,) = torch.autograd.grad(loss, logits, torch.ones_like(loss) * scale)
        losses.append(loss.detach())
        if need_grad:
            grad_hidden[start:end] = grad_logits @ lm_weight
            grad_weight.addmm_(grad_logits.t().to(accumulate), rows.to(accumulate))
            if grad_bias is not None:
                grad_bias += grad_logits.to(accumulate).sum(0)
    loss = torch.cat(losses) if per_row else torch.stack(losses).to(accumulate).sum()
    return loss, grad_hidden, grad_weight, grad_bias


class _FusedLinearFocalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, lm_weight, bias, target, focal_kwargs, chunk_size, denominator):
        need_grad = any(ctx.needs_input_grad[:3])
        reduction = focal_kwargs["reduction"]
        ctx.focal_kwargs, ctx.chunk_size = focal_kwargs, chunk_size
        if reduction == "none":
            ctx.save_for_backward(hidden, lm_weight, bias, target)
            loss, *_ = _fold_chunks(hidden, lm_weight, bias, target, focal_kwargs, chunk_size, 1.0, False)
            return loss.to(hidden.dtype)
        # Chunks are summed; the mean divides once by the whole batch's denominator.
        inv_denominator = 1.0 / denominator if reduction == "mean" else 1.0
        loss, *grads = _fold_chunks(
            hidden, lm_weight, bias, target, {**focal_kwargs, "reduction": "sum"}, chunk_size, inv_denominator, need_grad
        )
        ctx.grads = grads
        return (loss * inv_denominator).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.focal_kwargs["reduction"] == "none":
            hidden, lm_weight, bias, target = ctx.saved_tensors
            _, *grads = _fold_chunks(hidden, lm_weight, bias, target, ctx.focal_kwargs, ctx.chunk_size, grad_output, True)
        else:
            grads = [None if g is None else g * grad_output for g in ctx.grads]
        ctx.grads = None
        # Autograd casts each gradient to its input's dtype.
        return (*grads, None, None, None, None)


def fused_linear_focal_loss(
    hidden, lm_weight, target, bias=None, *, chunk_size=None, **focal_kwargs
):
    """``focal_loss(hidden @ lm_weight.T + bias, target, **focal_kwargs)`` without the full logits.

    Args:
        hidden: ``(T, H)`` activations (float16, bfloat16, float32 or float64).
        lm_weight: ``(V, H)`` output projection.
        target: ``(T,)`` class indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)``.
        chunk_size: rows per chunk (default: about 2**26 logits per chunk).
        **focal_kwargs: ``gamma``, ``alpha``, ``weight``, ``ignore_index``, ``reduction``,
            ``label_smoothing``, ``backend`` of :func:`triton_focal.focal_loss`.

    Returns:
        The loss, as :func:`triton_focal.focal_loss` would return it.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a (T, H) tensor, got {getattr(hidden, 'shape', type(hidden).__name__)}")
    if not isinstance(lm_weight, torch.Tensor) or lm_weight.dim() != 2 or lm_weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"lm_weight must be (V, H) with H = {hidden.shape[1]} (hidden's last size), got "
            f"{tuple(getattr(lm_weight, 'shape', ()))}"
        )
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != lm_weight.shape[:1]):
        raise ValueError(f"bias must be a ({lm_weight.shape[0]},) tensor, got {tuple(getattr(bias, 'shape', ()))}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    for name, tensor in (("lm_weight", lm_weight), ("bias", bias)):
        _validation.check_same_device(hidden, name, tensor)
    kwargs = {"gamma": 2.0, "alpha": None, "weight": None, "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
    unknown = set(focal_kwargs) - set(kwargs) - {"backend"}
    if unknown:
        raise TypeError(f"fused_linear_focal_loss got unexpected keyword arguments {sorted(unknown)}")
    kwargs.update(focal_kwargs)
    # Check everything against a (T, V) shape without making the logits.
    probe = hidden.new_empty(1, 1).expand(hidden.shape[0], lm_weight.shape[0])
    args = _validation.softmax_args(
        probe, target, kwargs["gamma"], kwargs["alpha"], kwargs["weight"], kwargs["ignore_index"],
        kwargs["reduction"], kwargs["label_smoothing"],
    )
    denominator = reference.softmax_mean_denominator(
        target, args.weight, args.ignore_index, reference.compute_dtype(hidden.dtype)
    )
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return _FusedLinearFocalFunction.apply(hidden, lm_weight, bias, target, kwargs, chunk_size, denominator)
