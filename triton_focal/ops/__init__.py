"""The Triton backend: launchers, torch.library ops and autograd for the kernels.

Each function takes the canonical arguments produced by ``triton_focal._validation``
(the same as ``triton_focal.reference``).
"""

from .distribution_focal import distribution_focal_loss
from .sigmoid_focal import sigmoid_focal_loss, sigmoid_focal_loss_star, sigmoid_loss
from .softmax_focal import softmax_focal_loss

__all__ = [
    "softmax_focal_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_loss",
    "distribution_focal_loss",
]
