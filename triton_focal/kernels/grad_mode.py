"""What a fused-loss launch does with the gradient (the kernels' ``GRAD_MODE`` constant).

The policy that picks a mode lives in ``triton_focal/ops/grad_policy.py``.
"""

import triton.language as tl

GRAD_NONE = tl.constexpr(0)  # the loss only
GRAD_ALWAYS = tl.constexpr(1)  # forward: the gradient of the loss (grad_output = 1) too
GRAD_IF_POLICY = tl.constexpr(2)  # forward: the gradient too if the device's policy flag says so
GRAD_BACKWARD = tl.constexpr(3)  # backward: the gradient times grad_output, no loss

# Per-row softmax statistics (ROW_STATS), for rows whose re-read would come from DRAM: the
# forward saves them, and a backward that recomputes the gradient skips its statistics pass.
ROW_STATS_WRITE = tl.constexpr(1)
ROW_STATS_READ = tl.constexpr(2)
