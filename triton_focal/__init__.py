"""triton_focal: fused focal loss for segmentation, detection and large vocabularies.

Public names are those of SPEC.md: :func:`focal_loss`, :func:`sigmoid_focal_loss`,
:func:`sigmoid_focal_loss_star`, :func:`fused_linear_focal_loss`, :class:`FocalLoss`,
:class:`SigmoidFocalLoss` and :func:`available_backends`.
"""

from .backends import available_backends
from .functional import focal_loss, sigmoid_focal_loss, sigmoid_focal_loss_star
from .fused_linear import fused_linear_focal_loss
from .modules import FocalLoss, SigmoidFocalLoss

__version__ = "0.1.0"

__all__ = [
    "focal_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "fused_linear_focal_loss",
    "FocalLoss",
    "SigmoidFocalLoss",
    "available_backends",
]
