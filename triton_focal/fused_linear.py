"""Focal loss of a linear head without holding the full logits: large vocabularies.

``fused_linear_focal_loss(hidden, lm_weight, target)`` equals
``focal_loss(hidden @ lm_weight.T + bias, target)``, but the ``(T, V)`` logits only ever
exist one chunk of rows at a time. Each chunk's logits are made, turned into their loss
and gradient, and folded at once into the gradients of ``hidden``, ``lm_weight`` and
``bias``. A chunk holds about as many logits as ``hidden`` has elements (Liger-Kernel's
sizing), so the extra memory is a few hidden-sized buffers plus the weight's gradient,
instead of two ``(T, V)`` tensors. The Triton kernel computes a chunk's loss and gradient
in one pass; the reference and compile backends use the torch statement of the same row
math without an autograd graph (``_row_math.rows_focal_loss``), so a chunk's
intermediates are its logits, their gradient and a few temporaries of that size.

For ``reduction="sum"`` and ``"mean"`` the gradients are made in the forward pass and only
scaled by ``grad_output`` in backward. For ``"none"`` the per-token ``grad_output`` is
needed before the weight gradient can be summed, so backward recomputes the chunks.

A backward with ``create_graph=True`` (a Hessian-vector product, a gradient penalty) goes
through the eager reference on the whole ``(T, V)`` logits instead, so that its gradients
can be differentiated again; that path alone holds the full logits.
"""

from typing import Optional, Union

import torch

from . import _validation, backends, reference
from ._autograd_state import functorch_active
from ._row_math import mean_scales, rows_focal_loss
from .functional import focal_loss

# Fewer rows than this make the chunk's matrix products lose efficiency (measured on CPUs;
# GPUs' GEMM tiles are of the same order), so the default chunk never goes below it.
MIN_CHUNK_ROWS = 256


def _chunks(num_rows, vocab, hidden_size, chunk_size):
    """Row ranges of the chunks. By default a chunk holds about ``num_rows * hidden_size``
    logits, as many as ``hidden`` has elements (the logits never outweigh the activations),
    and at least ``MIN_CHUNK_ROWS`` rows."""
    if chunk_size is None:
        num_chunks = max(1, -(-vocab // max(hidden_size, 1)))  # ceil(V / H)
        chunk_size = max(MIN_CHUNK_ROWS, -(-num_rows // num_chunks))
    return [(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)]


def _chunk_loss_and_grad(logits, target, backend, focal_kwargs, scales, need_grad):
    """One chunk's summed (or per-row) loss and the gradient of its logits.

    ``scales`` = ``(focal, z)``: what each row's focal part and z-loss part are multiplied by
    before differentiating (numbers, or ``(rows,)`` tensors of per-token grad_output); ``z``
    None: the same as ``focal``.
    """
    per_row = focal_kwargs["reduction"] == "none"
    scale_focal, scale_z = scales
    settings = {key: value for key, value in focal_kwargs.items() if key not in ("reduction", "backend")}
    # The kernel scales a row's focal and z parts alike: it serves when the two scales are one.
    if backend == "triton" and (settings["z_loss"] == 0 or scale_z is None):
        with torch.enable_grad():
            logits.requires_grad_(need_grad)
            loss = focal_loss(logits, target, reduction="none" if per_row else "sum", backend="triton", **settings)
            grad = None
            if need_grad:
                (grad,) = torch.autograd.grad(loss, logits, torch.ones_like(loss) * scale_focal)
        return (loss.detach() if per_row else loss.detach() * scale_focal), grad
    scale_z = scale_focal if scale_z is None else scale_z
    args = _validation.softmax_args(
        logits,
        target,
        settings["gamma"],
        settings["alpha"],
        settings["weight"],
        settings["ignore_index"],
        "none",
        settings["label_smoothing"],
        False,
        settings["z_loss"],
        settings["softcap"],
    )
    focal_rows, z_rows, grad = rows_focal_loss(
        logits.to(reference.compute_dtype(logits.dtype)),
        target,
        gamma=args.gamma,
        alpha=args.alpha,
        weight=args.weight,
        ignore_index=args.ignore_index,
        label_smoothing=args.label_smoothing,
        z_loss=args.z_loss,
        softcap=args.softcap,
        backend=backend,
        scale_focal=scale_focal,
        scale_z=scale_z,
        need_grad=need_grad,
    )
    if per_row:
        return focal_rows + z_rows, grad
    return focal_rows.sum() * scale_focal + z_rows.sum() * scale_z, grad


def _fold_chunks(hidden, lm_weight, bias, target, focal_kwargs, chunk_size, scales, need_grad):
    """Loss of every chunk and, if ``need_grad``, the gradients it induces.

    ``scales`` = ``(focal, z)``: what the focal and z-loss parts are multiplied by before
    differentiating: numbers or 0-dim tensors, or ``(T,)`` tensors of per-token grad_output.
    Returns ``(loss sum or per-row loss, grad_hidden, grad_weight, grad_bias)``.
    """
    per_row = focal_kwargs["reduction"] == "none"
    backend = backends.resolve(focal_kwargs["backend"], hidden.device)
    accumulate = reference.compute_dtype(hidden.dtype)
    losses = []
    grad_hidden = torch.empty_like(hidden) if need_grad else None
    grad_weight = torch.zeros_like(lm_weight, dtype=accumulate) if need_grad else None
    grad_bias = torch.zeros_like(bias, dtype=accumulate) if need_grad and bias is not None else None
    for start, end in _chunks(hidden.shape[0], lm_weight.shape[0], hidden.shape[1], chunk_size):
        rows = hidden[start:end]
        logits = rows @ lm_weight.t()
        if bias is not None:
            logits += bias
        chunk_scales = [scale[start:end] if isinstance(scale, torch.Tensor) and per_row else scale for scale in scales]
        loss, grad_logits = _chunk_loss_and_grad(
            logits, target[start:end], backend, focal_kwargs, chunk_scales, need_grad
        )
        del logits
        losses.append(loss)
        if need_grad:
            grad_logits = grad_logits.to(hidden.dtype)
            torch.mm(grad_logits, lm_weight, out=grad_hidden[start:end])
            grad_weight.addmm_(grad_logits.t().to(accumulate), rows.to(accumulate))
            if grad_bias is not None:
                grad_bias += grad_logits.to(accumulate).sum(0)
            del grad_logits
    if not losses:  # an empty batch: no rows, or the empty sum
        loss = hidden.new_zeros(0, dtype=accumulate) if per_row else hidden.new_zeros((), dtype=accumulate)
    else:
        loss = torch.cat(losses) if per_row else torch.stack(losses).to(accumulate).sum()
    return loss, grad_hidden, grad_weight, grad_bias


def _differentiable_loss(hidden, lm_weight, bias, target, focal_kwargs):
    """The same loss through the eager reference on the whole logits: every step is an
    autograd op, so gradients made from it can be differentiated again."""
    logits = hidden @ lm_weight.t()
    if bias is not None:
        logits = logits + bias
    return focal_loss(logits, target, **{**focal_kwargs, "backend": "reference"})


def _check_operand(name, tensor, hidden):
    """``hidden``, ``lm_weight`` and ``bias``: dense floating-point tensors of one dtype (under
    autocast, which casts the matrix product's operands, only their kind is checked)."""
    if tensor is None:
        return
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}; pass {name}.to_dense()")
    if tensor.dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
    if tensor.dtype != hidden.dtype and not torch.is_autocast_enabled(hidden.device.type):
        raise TypeError(
            f"{name} is {tensor.dtype} but hidden is {hidden.dtype}; cast one to the other's dtype "
            f"(e.g. {name}.to(hidden.dtype))"
        )


class _FusedLinearFocalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, lm_weight, bias, target, focal_kwargs, chunk_size, denominator, count):
        need_grad = any(ctx.needs_input_grad[:3])
        reduction = focal_kwargs["reduction"]
        ctx.focal_kwargs, ctx.chunk_size = focal_kwargs, chunk_size
        if reduction == "none":
            ctx.save_for_backward(hidden, lm_weight, bias, target)
            loss, *_ = _fold_chunks(hidden, lm_weight, bias, target, focal_kwargs, chunk_size, (1.0, 1.0), False)
            return loss.to(hidden.dtype)
        # Chunks are summed, each part already divided by the whole batch's mean divisor.
        scales = mean_scales(reduction, denominator, count)
        if focal_kwargs["z_loss"] == 0 or focal_kwargs["weight"] is None:
            scales = (scales[0], None)  # one divisor (sum w_y = rows without weight)
        loss, *grads = _fold_chunks(
            hidden, lm_weight, bias, target, {**focal_kwargs, "reduction": "sum"}, chunk_size, scales, need_grad
        )
        # Saved, not kept as attributes: autograd frees saved tensors after a backward unless
        # the graph is retained, so a second backward (retain_graph=True) finds them again.
        ctx.save_for_backward(hidden, lm_weight, bias, target, *grads)
        return loss.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        hidden, lm_weight, bias, target, *stored_grads = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable
            wanted = [t for t, needed in zip((hidden, lm_weight, bias), ctx.needs_input_grad) if needed]
            loss = _differentiable_loss(hidden, lm_weight, bias, target, ctx.focal_kwargs)
            made = iter(torch.autograd.grad(loss, wanted, grad_output, create_graph=True))
            grads = [next(made) if needed else None for needed in ctx.needs_input_grad[:3]]
        elif ctx.focal_kwargs["reduction"] == "none":
            scales = (grad_output, None)
            _, *grads = _fold_chunks(hidden, lm_weight, bias, target, ctx.focal_kwargs, ctx.chunk_size, scales, True)
        else:
            grads = [None if g is None else g * grad_output for g in stored_grads]
        # Autograd casts each gradient to its input's dtype.
        return (*grads, None, None, None, None, None)


def fused_linear_focal_loss(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    target: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    gamma: Union[float, torch.Tensor] = 2.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """``focal_loss(hidden @ lm_weight.T + bias, target, ...)`` without the full logits.

    Args:
        hidden: ``(T, H)`` activations (float16, bfloat16, float32 or float64).
        lm_weight: ``(V, H)`` output projection.
        target: ``(T,)`` class indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)``.
        chunk_size: rows per chunk (default: ``ceil(T / ceil(V / H))``, a chunk of logits
            about the size of ``hidden``, and at least 256 rows).
        gamma, alpha, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
            backend: as in :func:`triton_focal.focal_loss`, over the ``(T, V)`` logits.

    Returns:
        The loss, as :func:`triton_focal.focal_loss` would return it. A backward with
        ``create_graph=True`` gives gradients that can be differentiated again (computed
        through the eager reference on the whole logits).

    Raises:
        ValueError: ``hidden``, ``lm_weight`` or ``bias`` has the wrong shape, ``chunk_size``
            is not a positive int, tensors are on different devices, or a loss argument is
            refused as :func:`triton_focal.focal_loss` refuses it.
        TypeError: a loss argument of the wrong kind.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a (T, H) tensor, got {getattr(hidden, 'shape', type(hidden).__name__)}")
    _check_operand("hidden", hidden, hidden)
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
        _check_operand(name, tensor, hidden)
    kwargs = {
        "gamma": gamma,
        "alpha": alpha,
        "weight": weight,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
        "backend": backend,
    }
    # Check everything against a (T, V) shape without making the logits.
    probe = hidden.new_empty(1, 1).expand(hidden.shape[0], lm_weight.shape[0])
    args = _validation.softmax_args(
        probe,
        target,
        kwargs["gamma"],
        kwargs["alpha"],
        kwargs["weight"],
        kwargs["ignore_index"],
        kwargs["reduction"],
        kwargs["label_smoothing"],
        False,
        kwargs["z_loss"],
        kwargs["softcap"],
    )
    # The chunks compute alpha, weight and gamma without an autograd graph.
    _validation.refuse_learnable(
        "fused_linear_focal_loss",
        hint="pass it detached (.detach()), or compute focal_loss(hidden @ lm_weight.T, "
        "target, ..., backend='reference'), which differentiates it",
        alpha=args.alpha,
        weight=args.weight,
        gamma=args.gamma,
    )
    target = args.target.reshape(target.shape)  # int64 where its dtype cannot hold ignore_index
    if functorch_active():  # torch.func transforms: plain torch ops, which they all support
        return _differentiable_loss(hidden, lm_weight, bias, target, kwargs)
    dtype = reference.compute_dtype(hidden.dtype)
    denominator = reference.softmax_mean_denominator(target, args.weight, args.ignore_index, dtype)
    count = (target != args.ignore_index).sum(dtype=dtype)
    return _FusedLinearFocalFunction.apply(hidden, lm_weight, bias, target, kwargs, chunk_size, denominator, count)
