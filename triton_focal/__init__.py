"""triton_focal: fused focal loss for segmentation, detection and large vocabularies.

Public names: :func:`focal_loss`, :func:`sigmoid_focal_loss`, :func:`sigmoid_focal_loss_star`,
:func:`fused_linear_focal_loss`, :class:`FocalLoss`, :class:`SigmoidFocalLoss`, the focal
family (:func:`quality_focal_loss`, :func:`varifocal_loss`, :func:`asymmetric_loss`,
:func:`distribution_focal_loss` and their modules), :func:`set_gradient_policy` and
:func:`available_backends`. The contract they keep (the formulas and reductions, the errors,
which backend runs where, and the numerics every backend guarantees) is stated in the
project's README.md, sections "Semantics", "Errors" and "Backends"; ``reference.py`` is its
executable statement.
"""

from .backends import available_backends
from .functional import focal_loss, sigmoid_focal_loss, sigmoid_focal_loss_star
from .fused_linear import fused_linear_focal_loss
from .gradient_policy import gradient_policy, set_gradient_policy
from .losses import (
    AsymmetricLoss,
    DistributionFocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    asymmetric_loss,
    distribution_focal_loss,
    quality_focal_loss,
    varifocal_loss,
)
from .modules import FocalLoss, SigmoidFocalLoss

__version__ = "0.1.0"

__all__ = [
    "focal_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "fused_linear_focal_loss",
    "distribution_focal_loss",
    "FocalLoss",
    "SigmoidFocalLoss",
    "DistributionFocalLoss",
    "available_backends",
    "set_gradient_policy",
    "gradient_policy",
    "quality_focal_loss",
    "varifocal_loss",
    "asymmetric_loss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "AsymmetricLoss",
]
