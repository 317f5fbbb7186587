"""What a backward may ask autograd about the pass it runs in (shared by every backend)."""

import torch


def graph_is_kept():
    """Whether the running backward keeps the graph (``retain_graph=True``, gradcheck): a later
    backward will then read this one's saved tensors again, so none may be handed out to be
    accumulated into.

    A private autograd query (the one AOTAutograd uses); where it is missing, assume the
    graph is kept, which is always correct, only slower.
    """
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if query is None else bool(query())


def functorch_active():
    """Whether a ``torch.func`` transform (grad, vmap, jacrev, ...) is running."""
    return torch._C._functorch.maybe_current_level() is not None
