"""What the ops' autograd formulas share: whether a backward runs traced or keeps its graph,
the options saved on ``ctx``, and the reference's autograd for what the kernels do not do."""

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .._autograd_state import graph_is_kept


def traced(tensor):
    # A tracer hands in tensor subclasses (fake or functional tensors), and
    # torch.compiler.is_compiling() is False while AOTAutograd traces a backward.
    return torch.compiler.is_compiling() or type(tensor) is not torch.Tensor


def backward_in_place(grad):
    """Whether this backward may finish in the forward's gradient buffer ``grad``."""
    return grad.numel() > 0 and not traced(grad) and not graph_is_kept()


# --- the eager hot path ---------------------------------------------------------------------
# A ``torch.library`` op is what torch.compile, fake tensors and dispatch modes see. Called
# eagerly it costs host time the kernels do not need: the dispatcher's trip through the op's
# schema (re-read whole for each of its arguments by torch's default filling), a Dynamo-disable
# wrapper and a redispatch, twice a step. On a GPU whose host issues a torch op in tens of
# microseconds that makes a step wait on the host. So an eager call with plain tensors runs the
# op's own body under an ``autograd.Function`` with the same setup_context and backward.


def dispatch_needed(args):
    """Whether a call must go through the registered op: traced or compiled, a tensor subclass
    (fake, functional), or a dispatch mode that should see the op (a profiler, a recorder)."""
    return (
        torch.compiler.is_compiling()
        or _get_current_dispatch_mode() is not None
        or any(type(a) is not torch.Tensor for a in args if isinstance(a, torch.Tensor))
    )


def eager_op(op, setup_context=None, backward=None):
    """``op`` (a ``torch.library.custom_op``), called as such where :func:`dispatch_needed`, else
    its body, under an ``autograd.Function`` made of ``setup_context`` and ``backward`` (the
    op's ``register_autograd`` pair) where it has them."""
    body = op._init_fn
    if backward is None:
        return lambda *args: op(*args) if dispatch_needed(args) else body(*args)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = body(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"Eager_{op._name}"
    return lambda *args: op(*args) if dispatch_needed(args) else Eager.apply(*args)


# --- what the kernels do not do: second derivatives and torch.func --------------------------
# The kernels compute first derivatives. A second derivative (``create_graph=True``) and the
# ``torch.func`` transforms go through the eager reference instead: correct, and as fast as
# eager PyTorch.


def differentiable_grad(reference_loss, input, grad_loss):
    """``d loss / d input`` times ``grad_loss`` with a graph, from the reference's autograd,
    for a backward that was asked to ``create_graph``."""
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(reference_loss(input), input, grad_loss, create_graph=True)
    return grad


def save_options(ctx, tensors, options):
    """Save ``tensors`` and the loss's ``options`` (tensors among them saved, the rest kept)."""
    ctx.num_tensors = len(tensors)
    ctx.option_is_tensor = [isinstance(o, torch.Tensor) for o in options]
    ctx.options = [None if is_tensor else o for o, is_tensor in zip(options, ctx.option_is_tensor)]
    ctx.save_for_backward(*tensors, *(o for o in options if isinstance(o, torch.Tensor)))


def saved_options(ctx):
    """``(tensors, options)`` as given to ``save_options``."""
    saved = ctx.saved_tensors
    tensors, option_tensors = saved[: ctx.num_tensors], iter(saved[ctx.num_tensors :])
    options = [next(option_tensors) if is_tensor else o for o, is_tensor in zip(ctx.options, ctx.option_is_tensor)]
    return tensors, options


# Integer gammas up to this get their powers as products, compiled once per value (no MUFU).
