"""The focal family beyond plain focal loss: each loss's public function and module.

Every loss here is one term of the shared sigmoid (``triton_focal.sigmoid_term``) or softmax
machinery: the checks, backends, reductions and kernels are those of the plain losses.
"""

from .asymmetric import AsymmetricLoss, asymmetric_loss
from .quality_focal import QualityFocalLoss, VarifocalLoss, quality_focal_loss, varifocal_loss

__all__ = [
    "quality_focal_loss",
    "varifocal_loss",
    "asymmetric_loss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "AsymmetricLoss",
]
