"""Ultralytics YOLO (v8, 11, and the other ``v8DetectionLoss`` heads): the classification loss fused
(``pip install "triton-focal[ultralytics]"``).

``v8DetectionLoss`` scores the classes with ``BCEWithLogitsLoss(reduction="none")`` against the
task-aligned assigner's soft targets, multiplies by ``model.class_weights`` when set, and sums:
``cls_loss = bce.sum() / target_scores_sum``. The patch replaces that ``bce`` by
:func:`triton_focal.sigmoid_focal_loss` with ``reduction="sum"`` (the class weights folded into its
``weight``): one pass that writes the loss sum and the gradient, no ``(B, anchors, nc)`` loss
tensor. With the defaults (``gamma=0``, ``alpha=-1``) it is ultralytics' BCE, value and gradient;
``gamma > 0`` / ``alpha`` make it the focal loss (per element what ``ultralytics.utils.loss.FocalLoss``
computes, ultralytics' ``alpha <= 0`` meaning no alpha), still summed and divided by
``target_scores_sum`` as the detection loss does.

Training with ``YOLO(...).train()`` (the trainer builds its own model)::

    from ultralytics import YOLO
    from triton_focal.integrations.ultralytics import focal_loss_callback

    model = YOLO("yolov8n.yaml")   # or yolo11n.yaml / a .pt
    model.add_callback("on_pretrain_routine_end", focal_loss_callback(gamma=1.5, alpha=0.25))
    model.train(data="coco8.yaml", epochs=1)

A model you train yourself: ``enable_focal_loss(model, gamma=1.5, alpha=0.25)`` (a ``DetectionModel``
or a ``YOLO``). Only the model's ``criterion`` is replaced (the attribute ultralytics strips before
saving a checkpoint), so saved checkpoints do not need triton_focal to load.
"""

import numbers
from typing import Optional

import torch
from torch import nn

from .. import _validation, backends
from ..functional import sigmoid_focal_loss


class FusedClassificationLoss(nn.Module):
    """Stands in for ``v8DetectionLoss.bce``: returns the *sum* of the (focal) BCE, a 0-dim tensor.

    ``v8DetectionLoss`` computes ``self.bce(pred_scores, target_scores).sum() / target_scores_sum``;
    the sum of a 0-dim tensor is itself, so the result is unchanged and the ``(B, A, nc)``
    per-element loss is never made.

    Args:
        gamma: focusing parameter ``>= 0`` (0: BCE).
        alpha: weight of positives in ``[0, 1]``; ``<= 0`` for none (ultralytics' ``FocalLoss`` convention).
        class_weight: ``(nc,)`` class weights (``model.class_weights``), or None.
        backend: triton_focal's backend.
    """

    def __init__(
        self,
        gamma: float = 0.0,
        alpha: float = -1.0,
        class_weight: Optional[torch.Tensor] = None,
        backend: str = "auto",
    ):
        super().__init__()
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 <= gamma < float("inf"):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha <= 1:
            raise ValueError(f"alpha must be a number <= 1 (<= 0 for no alpha), got {alpha!r}")
        backends.check_name(backend)
        self.gamma = float(gamma)
        self.alpha = float(alpha) if alpha > 0 else -1.0
        self.backend = backend
        if class_weight is not None:
            if not isinstance(class_weight, torch.Tensor):
                raise TypeError(f"class_weight must be a tensor, got {type(class_weight).__name__}")
            class_weight = class_weight.detach().reshape(-1).float()
            _validation.check_weight_values(class_weight, validate=True)
        self.register_buffer("class_weight", class_weight)

    def forward(self, pred_scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weight is not None:
            weight = self.class_weight.to(device=pred_scores.device, dtype=pred_scores.dtype)
        return sigmoid_focal_loss(
            pred_scores,
            target_scores.to(pred_scores.dtype),
            alpha=self.alpha,
            gamma=self.gamma,
            weight=weight,
            reduction="sum",
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, backend={self.backend!r}"


def _detection_losses(criterion):
    """The ``v8DetectionLoss`` instances inside a criterion (itself, or an E2E loss's two branches)."""
    from ultralytics.utils.loss import v8DetectionLoss

    if isinstance(criterion, v8DetectionLoss):
        return [criterion]
    parts = [getattr(criterion, name, None) for name in ("one2many", "one2one")]
    found = [part for part in parts if isinstance(part, v8DetectionLoss)]
    if not found:
        raise TypeError(
            f"{type(criterion).__name__} is not a v8DetectionLoss (or an end-to-end loss made of them): "
            "there is no BCE classification loss to replace"
        )
    return found


def patch_criterion(criterion, *, gamma: float = 0.0, alpha: float = -1.0, backend: str = "auto"):
    """Replace the classification BCE of an ultralytics detection criterion in place; returns it.

    Works on ``v8DetectionLoss`` and its subclasses (segmentation, pose, OBB) and on the end-to-end
    losses built of two of them (``E2ELoss``, ``E2EDetectLoss``). ``criterion.class_weights`` moves into
    the fused loss (and is set to None there, so it is applied once).
    """
    for loss in _detection_losses(criterion):
        class_weight = getattr(loss, "class_weights", None)
        if isinstance(loss.bce, FusedClassificationLoss):  # patched before: keep its class weights
            class_weight = loss.bce.class_weight if class_weight is None else class_weight
        loss.bce = FusedClassificationLoss(gamma=gamma, alpha=alpha, class_weight=class_weight, backend=backend)
        loss.class_weights = None
    return criterion


def _unwrap(model):
    model = getattr(model, "module", model)  # DataParallel / DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # torch.compile
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "init_criterion"):  # a YOLO wrapper
        model = inner
    return getattr(model, "student_model", model)  # distillation: the student builds the criterion


def enable_focal_loss(model, *, gamma: float = 0.0, alpha: float = -1.0, backend: str = "auto"):
    """Give an ultralytics detection model (``DetectionModel``, a ``YOLO``, a wrapped one) the fused
    classification loss: its criterion is built now (reading ``model.class_weights`` and
    ``model.args``) and patched. Returns ``model``."""
    target = _unwrap(model)
    if not hasattr(target, "init_criterion"):
        raise TypeError(f"model must be an ultralytics model (with init_criterion), got {type(model).__name__}")
    criterion = getattr(target, "criterion", None)
    target.criterion = patch_criterion(
        criterion if criterion is not None else target.init_criterion(), gamma=gamma, alpha=alpha, backend=backend
    )
    return model


def focal_loss_callback(*, gamma: float = 0.0, alpha: float = -1.0, backend: str = "auto"):
    """A trainer callback (``model.add_callback("on_pretrain_routine_end", ...)``) that enables the fused
    loss on the model being trained and on its EMA copy (the validation loss)."""
    FusedClassificationLoss(gamma=gamma, alpha=alpha, backend=backend)  # bad settings fail now, not in training

    def callback(trainer):
        enable_focal_loss(trainer.model, gamma=gamma, alpha=alpha, backend=backend)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        if ema is not None:
            enable_focal_loss(ema, gamma=gamma, alpha=alpha, backend=backend)

    return callback
