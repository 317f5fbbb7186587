"""Losses beyond the focal losses of ``functional.py``, one file each, with their modules."""

from .distribution_focal import DistributionFocalLoss, distribution_focal_loss

__all__ = ["distribution_focal_loss", "DistributionFocalLoss"]
