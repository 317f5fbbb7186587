"""What a fused-loss launch does with the gradient (the kernels' ``GRAD_MODE`` constant).

The policy that picks a mode lives in ``triton_focal/ops/grad_policy.py``; the user chooses it
with ``triton_focal.set_gradient_policy``.
"""

import triton
import triton.language as tl

GRAD_NONE = tl.constexpr(0)  # the loss only
GRAD_ALWAYS = tl.constexpr(1)  # forward: the gradient of the loss (grad_output = 1) too
GRAD_IF_POLICY = tl.constexpr(2)  # forward: the gradient too if the device's policy flag says so
GRAD_BACKWARD = tl.constexpr(3)  # backward: the gradient times grad_output, no loss

# Per-row softmax statistics (ROW_STATS), for rows whose re-read would come from DRAM: the
# forward saves them, and a backward that recomputes the gradient skips its statistics pass.
ROW_STATS_WRITE = tl.constexpr(1)
ROW_STATS_READ = tl.constexpr(2)


@triton.jit
def gradient_plan(
    policy_ptr,
    stored_ptr,
    grad_out_ptr,
    num_tiles,
    GRAD_MODE: tl.constexpr,
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    SKIP_IF_STORED: tl.constexpr,
    ACC: tl.constexpr,
):
    """``(store_grad, grad_scale, tiles)`` of one launch, decided on the device (no host sync).

    ``store_grad``: whether the launch writes the gradient (a runtime value in GRAD_IF_POLICY
    and in a backward that may find it stored). ``grad_scale``: a 0-dim ``grad_output``
    (else 1; a per-element one is read by the kernel). ``tiles``: the tiles to walk, 0 for a
    backward with nothing to do (the forward stored the gradient and ``grad_output`` is 1).
    Program 0 records what the others decided: a forward whether it stored the gradient
    (``stored_ptr``, not filled beforehand), a backward the policy for later forwards (``policy_ptr``: store only
    where ``grad_output`` is 1).
    """
    grad_scale = tl.full([], 1.0, ACC)
    tiles = num_tiles
    if GRAD_MODE == GRAD_IF_POLICY:
        store_grad = tl.load(policy_ptr) != 0
        if tl.program_id(0) == 0:
            tl.store(stored_ptr, store_grad.to(tl.int32))
    elif GRAD_MODE == GRAD_BACKWARD:
        store_grad = True
        if GRAD_OUT_IS_SCALAR:
            grad_scale = tl.load(grad_out_ptr).to(ACC)
            if tl.program_id(0) == 0:
                tl.store(policy_ptr, (grad_scale == 1.0).to(tl.int32))
            if SKIP_IF_STORED:
                store_grad = (tl.load(stored_ptr) == 0) | (grad_scale != 1.0)
                tiles = tl.where(store_grad, num_tiles, 0)
    else:
        store_grad = GRAD_MODE == GRAD_ALWAYS
    return store_grad, grad_scale, tiles
