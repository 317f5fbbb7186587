"""Who writes the Triton kernels' gradient, chosen by the user (the mechanics: ``ops/grad_policy.py``).

``"auto"`` (the default): a forward whose logits require grad writes the gradient for
``grad_output == 1`` while the logits are on chip, where the backward then gets that
``grad_output`` (plain ``loss.backward()``); any other backward recomputes it. One read of the
logits and one write of the gradient per step.

``"recompute"``: forwards compute the loss only and every backward recomputes the gradient from
the logits: a read of the logits more per step, and no logits-sized gradient held from the
forward to the backward. Choose it where the memory between them is what runs out (several
large losses summed before one backward, a long forward after the loss).

The compile backend and the reference are not affected: they have no choice to make.
"""

POLICIES = ("auto", "recompute")
_policy = ["auto"]


def set_gradient_policy(policy: str) -> str:
    """Choose who writes the Triton kernels' gradient, for every later call in this process.

    Args:
        policy: ``"auto"`` or ``"recompute"`` (see the module docstring).

    Returns:
        The policy in force before the call, so that it can be restored.

    Raises:
        ValueError: ``policy`` is not one of ``"auto"``, ``"recompute"``.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    previous, _policy[0] = _policy[0], policy
    return previous


def gradient_policy() -> str:
    """The policy in force: ``"auto"`` or ``"recompute"``."""
    return _policy[0]
