"""The focal family beyond plain focal loss, one file each, with their modules.

QFL, VFL and ASL are terms of the shared sigmoid machinery (``triton_focal.sigmoid_term``): the
checks, backends, reductions and kernel are those of the sigmoid focal loss. DFL is a softmax
over a few bins with a two-hot target, a kernel of its own built from the shared helpers.
"""

from .asymmetric import AsymmetricLoss, asymmetric_loss
from .distribution_focal import DistributionFocalLoss, distribution_focal_loss
from .quality_focal import QualityFocalLoss, VarifocalLoss, quality_focal_loss, varifocal_loss

__all__ = [
    "quality_focal_loss",
    "varifocal_loss",
    "asymmetric_loss",
    "distribution_focal_loss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "AsymmetricLoss",
    "DistributionFocalLoss",
]
