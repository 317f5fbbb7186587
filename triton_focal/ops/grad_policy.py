"""Who writes a fused loss's gradient: the forward, or the backward (every Triton loss shares it).

Forward + backward of a fused loss is cheapest when the forward
computes the gradient while the logits are on chip and the backward has nothing to do: one
read of the logits, one write of the gradient. That holds only for ``grad_output == 1``
(plain ``loss.backward()``). Any other ``grad_output`` would then cost a read and a write of
the stored gradient more, so there the backward recomputes the gradient from the logits
instead (times ``grad_output``), and the forward stops storing it:

* a device flag per device, ``policy_flag``, says whether forwards store the gradient. Each
  backward with a 0-dim ``grad_output`` sets it to ``grad_output == 1``, on the device;
* each forward records in its own ``stored`` flag whether it stored the gradient; its
  backward exits at once when ``stored`` and ``grad_output == 1``, and otherwise recomputes;
* traced graphs (``torch.compile``) never store: their backward always recomputes into a new
  buffer. So does a backward that keeps the graph (``retain_graph=True``, ``gradcheck``),
  because a later backward must still find the forward's buffer untouched.

Nothing is decided on the host, so nothing waits for the GPU.

The user's switch, ``triton_focal.set_gradient_policy`` (``triton_focal/gradient_policy.py``):
``"auto"`` (the default) is the policy above; ``"recompute"`` makes every forward compute the
loss only and every backward recompute the gradient (:func:`forward_may_store`).

The launch machinery is ``launch.py``, the autograd plumbing ``autograd.py``, the in-place
gradient's rescale ``inplace_grad.py``.
"""

import torch

from ..gradient_policy import gradient_policy
from ..kernels.grad_mode import GRAD_IF_POLICY


def forward_may_store(needs_grad, reduction):
    """Whether a forward may store its gradient for ``grad_output == 1``: it needs a gradient,
    its loss is reduced, it is not traced (traced graphs always recompute), and the user's
    policy is ``"auto"``."""
    return needs_grad and reduction != "none" and not torch.compiler.is_compiling() and gradient_policy() == "auto"


_policy_flags = {}


def policy_flag(device):
    """``(1,)`` int32 on ``device``: 1 while forwards should store their gradient (see above)."""
    key = str(device)
    if key not in _policy_flags:
        _policy_flags[key] = torch.ones(1, dtype=torch.int32, device=device)
    return _policy_flags[key]


def finish_empty_launch(grad, stored, grad_mode):
    """What a launch with nothing to compute still owes: a zero gradient, and a forward that
    may store marks it stored (its backward then has nothing to add)."""
    if grad is not None:
        grad.zero_()
    if stored is not None and grad_mode == GRAD_IF_POLICY:
        stored.fill_(1)


def stored_flag(device, store_grad):
    """A forward's ``stored`` flag: written by the launch where it may store the gradient
    (so nothing fills it first), else 0 (that forward never stores)."""
    if store_grad:
        return torch.empty(1, dtype=torch.int32, device=device)
    return torch.zeros(1, dtype=torch.int32, device=device)
