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
or a ``YOLO``). ``fuse_dfl=True`` (on ``enable_focal_loss``, ``focal_loss_callback`` and
``patch_criterion``) also replaces the box loss, ``BboxLoss``, by :class:`FusedBboxLoss`: its
Distribution Focal Loss term is one masked :func:`triton_focal.distribution_focal_loss` over every
anchor (no gather of the foreground logits), its IoU term ultralytics' own; ``patch_bbox_loss(criterion)``
replaces the box loss alone. Only the model's ``criterion`` is replaced (the attribute ultralytics strips before
saving a checkpoint), so saved checkpoints do not need triton_focal to load.

RT-DETR (``RTDETRDetectionModel``, whose ``DETRLoss`` has ``use_vfl=True``): :class:`FusedVarifocalLoss`
stands in for ultralytics' ``VarifocalLoss`` (same signature and result, no dense weight), installed
by ``patch_detr_loss(criterion)``, ``enable_fused_varifocal(model)`` or, with ``RTDETR(...).train()``,
``model.add_callback("on_pretrain_routine_end", varifocal_loss_callback())``.
"""

import numbers
from typing import Optional

import torch
from torch import nn

from .. import _validation, backends
from ..functional import sigmoid_focal_loss
from ..losses.distribution_focal import distribution_focal_loss


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


def _detection_losses(criterion, replaced="a BCE classification loss"):
    """The ``v8DetectionLoss`` instances inside a criterion (itself, or an E2E loss's two branches)."""
    from ultralytics.utils.loss import v8DetectionLoss

    if isinstance(criterion, v8DetectionLoss):
        return [criterion]
    parts = [getattr(criterion, name, None) for name in ("one2many", "one2one")]
    found = [part for part in parts if isinstance(part, v8DetectionLoss)]
    if not found:
        raise TypeError(
            f"{type(criterion).__name__} is not a v8DetectionLoss (or an end-to-end loss made of them): "
            f"there is no {replaced} to replace"
        )
    return found


def patch_criterion(
    criterion, *, gamma: float = 0.0, alpha: float = -1.0, fuse_dfl: bool = False, backend: str = "auto"
):
    """Replace the classification BCE of an ultralytics detection criterion in place; returns it.

    Works on ``v8DetectionLoss`` and its subclasses (segmentation, pose, OBB) and on the end-to-end
    losses built of two of them (``E2ELoss``, ``E2EDetectLoss``). ``criterion.class_weights`` moves into
    the fused loss (and is set to None there, so it is applied once). ``fuse_dfl=True`` also replaces
    the box loss (:func:`patch_bbox_loss`).
    """
    _validation.check_flag("fuse_dfl", fuse_dfl)
    if fuse_dfl:
        patch_bbox_loss(criterion, backend=backend)
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


def enable_focal_loss(model, *, gamma: float = 0.0, alpha: float = -1.0, fuse_dfl: bool = False, backend: str = "auto"):
    """Give an ultralytics detection model (``DetectionModel``, a ``YOLO``, a wrapped one) the fused
    classification loss (and with ``fuse_dfl=True`` the fused box loss, :class:`FusedBboxLoss`): its
    criterion is built now (reading ``model.class_weights`` and ``model.args``) and patched.
    Returns ``model``."""
    target = _unwrap(model)
    if not hasattr(target, "init_criterion"):
        raise TypeError(f"model must be an ultralytics model (with init_criterion), got {type(model).__name__}")
    criterion = getattr(target, "criterion", None)
    target.criterion = patch_criterion(
        criterion if criterion is not None else target.init_criterion(),
        gamma=gamma,
        alpha=alpha,
        fuse_dfl=fuse_dfl,
        backend=backend,
    )
    return model


def focal_loss_callback(*, gamma: float = 0.0, alpha: float = -1.0, fuse_dfl: bool = False, backend: str = "auto"):
    """A trainer callback (``model.add_callback("on_pretrain_routine_end", ...)``) that enables the fused
    loss on the model being trained and on its EMA copy (the validation loss)."""
    FusedClassificationLoss(gamma=gamma, alpha=alpha, backend=backend)  # bad settings fail now, not in training
    _validation.check_flag("fuse_dfl", fuse_dfl)
    settings = dict(gamma=gamma, alpha=alpha, fuse_dfl=fuse_dfl, backend=backend)

    def callback(trainer):
        enable_focal_loss(trainer.model, **settings)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        if ema is not None:
            enable_focal_loss(ema, **settings)

    return callback


# --- the box loss: BboxLoss's Distribution Focal Loss ------------------------------------------


class FusedBboxLoss(nn.Module):
    """Stands in for ``ultralytics.utils.loss.BboxLoss`` (``v8DetectionLoss.bbox_loss``): the same
    ``(reg_max)`` constructor, ``forward`` arguments and ``(loss_iou, loss_dfl)`` result, values and
    gradients.

    The IoU term is ultralytics' own: the CIoU of the foreground boxes, gathered, weighted by each
    anchor's summed target scores and divided by ``target_scores_sum``. ultralytics' DFL term,
    ``(DFLoss(reg_max)(pred_dist[fg].view(-1, reg_max), target_ltrb[fg]) * weight).sum() / target_scores_sum``,
    is one masked call over all anchors::

        distribution_focal_loss(pred_dist.view(B, A, 4, reg_max), target_ltrb.clamp(0, reg_max - 1.01),
                                mask=fg_mask[..., None].expand(B, A, 4),
                                weight=target_scores.sum(-1, keepdim=True),
                                reduction="sum", normalizer=4 * target_scores_sum)

    with ``target_ltrb = bbox2dist(anchor_points, target_bboxes)`` (``DFLoss``'s mean over the four
    sides is the 4 of the normalizer). The foreground logits are not gathered (no copy of them, no
    scatter of their gradient into a zero-filled one), the background anchors' logits are not read,
    and the term needs no host sync (the IoU term's gather keeps ultralytics' own). The result has
    ultralytics' dtype (``pred_dist``'s promoted with ``target_scores``'). Half-precision logits
    outside CUDA autocast (ultralytics' AMP, where both take float32 logits) differ by rounding:
    ultralytics takes the log-softmax in their dtype and sums in float32, the fused loss computes
    in float32 and rounds the sum once to the logits' dtype (at most 2^-9 relative for bfloat16)
    before that cast; its gradient is as close to the float64 one as ultralytics'.

    ``reg_max <= 1`` has no DFL: ultralytics' own ``BboxLoss`` computes both terms (its L1 distance
    loss in ultralytics 8.4, a 0 ``loss_dfl`` before).

    Args:
        reg_max: bins per box side (``Detect.reg_max``, 16 for YOLOv8 / YOLO11).
        backend: triton_focal's backend for the DFL term.
    """

    def __init__(self, reg_max: int = 16, *, backend: str = "auto"):
        super().__init__()
        if isinstance(reg_max, bool) or not isinstance(reg_max, numbers.Integral) or reg_max < 1:
            raise ValueError(f"reg_max must be an int >= 1, got {reg_max!r}")
        backends.check_name(backend)
        self.reg_max = int(reg_max)
        self.backend = backend
        self.unfused = None
        if self.reg_max <= 1:
            from ultralytics.utils.loss import BboxLoss

            self.unfused = BboxLoss(self.reg_max)

    def forward(
        self,
        pred_dist: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor,
        target_scores: torch.Tensor,
        target_scores_sum,
        fg_mask: torch.Tensor,
        imgsz: Optional[torch.Tensor] = None,
        stride: Optional[torch.Tensor] = None,
    ):
        if self.unfused is not None:
            # ultralytics before 8.4 takes neither imgsz nor stride
            extra = () if imgsz is None and stride is None else (imgsz, stride)
            return self.unfused(
                pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum, fg_mask, *extra
            )
        from ultralytics.utils.metrics import bbox_iou
        from ultralytics.utils.tal import bbox2dist

        # ultralytics' IoU term, as ultralytics writes it
        fg = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[fg].sum(-1, keepdim=True)
        iou = bbox_iou(pred_bboxes[fg], target_bboxes[fg], xywh=False, CIoU=True)
        loss_iou = ((1.0 - iou) * weight).sum() / target_scores_sum

        n = self.reg_max
        logits = pred_dist.unflatten(-1, (4, n))
        target_ltrb = bbox2dist(anchor_points, target_bboxes).clamp(0, n - 1.01)  # DFLoss's clamp
        loss_dfl = distribution_focal_loss(
            logits,
            target_ltrb,
            mask=fg_mask[..., None].expand(target_ltrb.shape),
            weight=target_scores.sum(-1, keepdim=True),
            reduction="sum",
            normalizer=4 * target_scores_sum,
            backend=self.backend,
        )
        return loss_iou, loss_dfl.to(torch.promote_types(pred_dist.dtype, target_scores.dtype))

    def extra_repr(self) -> str:
        return f"reg_max={self.reg_max}, backend={self.backend!r}"


def patch_bbox_loss(criterion, *, backend: str = "auto"):
    """Replace the ``BboxLoss`` of an ultralytics detection criterion by :class:`FusedBboxLoss` in
    place; returns ``criterion``.

    Works on ``v8DetectionLoss`` and its segmentation and pose subclasses and on the end-to-end
    losses built of two of them. The OBB loss's ``RotatedBboxLoss`` (ProbIoU, rotated targets) is
    left as it is.
    """
    from ultralytics.utils.loss import BboxLoss

    backends.check_name(backend)
    for loss in _detection_losses(criterion, "box loss"):
        box = getattr(loss, "bbox_loss", None)
        if isinstance(box, FusedBboxLoss) or type(box) is BboxLoss:
            loss.bbox_loss = FusedBboxLoss(loss.reg_max, backend=backend)
    return criterion


# --- RT-DETR: DETRLoss's Varifocal Loss --------------------------------------------------------


class FusedVarifocalLoss(nn.Module):
    """Stands in for ``ultralytics.utils.loss.VarifocalLoss`` (``DETRLoss.vfl``): the same
    ``(gamma, alpha)`` constructor, ``forward(pred_score, gt_score, label)`` and result.

    ultralytics computes ``(BCE(pred, gt_score) * w).mean(1).sum()`` with
    ``w = alpha * sigmoid(pred) ** gamma * (1 - label) + gt_score * label`` (not detached). For
    ``(..., C)`` inputs whose rows hold at most one positive (``DETRLoss``'s one-hot of the matched
    class) this is::

        varifocal_loss(pred.reshape(-1, C), classes, score, alpha=alpha, gamma=gamma,
                       reduction="sum", normalizer=pred.shape[1])

    with ``classes`` each row's positive (``C``, background, for rows without one) and ``score`` its
    ``gt_score``, both read from ``label`` and ``gt_score`` without a one-hot or dense weight. The
    positives are the ones ``label`` marks: one whose ``gt_score`` is 0 (a matched box that does not
    overlap its target) has weight 0, as in ultralytics.

    ``gt_score`` must be 0 where ``label`` is 0, as ``DETRLoss`` builds it (``iou * one_hot``):
    there ultralytics' BCE target is ``gt_score`` but the class-index (and dense) forms take 0. Rows
    with several positives need ``multi_label=True``: the dense form, ``varifocal_loss(pred,
    gt_score, weight=...)`` with a 0 weight on positives whose ``gt_score`` is 0, equal to
    ultralytics' under the same assumption. Both assumptions are checked where the values are known
    without a host sync (CPU tensors, or ``validate=True``).

    The loss is taken from float32 logits and returned in float32, as ultralytics does; the gradient
    flows to ``pred_score`` only (``gt_score`` and ``label`` are targets).

    Args:
        gamma: the negatives' exponent, a finite number ``>= 0``.
        alpha: weight of the negatives, a finite number ``>= 0``.
        multi_label: rows may hold several positives (the dense form, which makes an ``(N, C)`` weight).
        backend: triton_focal's backend.
        validate: check ``label`` and ``gt_score`` on the GPU too (a host sync).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float = 0.75,
        *,
        multi_label: bool = False,
        backend: str = "auto",
        validate: bool = False,
    ):
        super().__init__()
        self.gamma = _validation.check_exponent("gamma", gamma)
        self.alpha = _validation.check_exponent("alpha", alpha)
        self.multi_label = _validation.check_flag("multi_label", multi_label)
        self.validate = _validation.check_flag("validate", validate)
        backends.check_name(backend)
        self.backend = backend

    def forward(self, pred_score: torch.Tensor, gt_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        from ..losses.quality_focal import varifocal_loss

        pred, gt_score, label = self._check(pred_score, gt_score, label)
        settings = dict(alpha=self.alpha, gamma=self.gamma, reduction="sum", normalizer=pred_score.shape[1])
        num_classes = pred.shape[-1]
        if self.multi_label:
            # ultralytics gives a labelled element with gt_score 0 weight 0; the dense form calls it a negative
            weight = ((label == 0) | (gt_score > 0)).to(pred.dtype)
            return varifocal_loss(pred, gt_score, weight=weight, backend=self.backend, **settings)
        positive = label != 0
        has_positive = positive.any(-1)
        column = positive.to(torch.uint8).argmax(-1)  # the row's positive (0 where it has none)
        classes = torch.where(has_positive, column, num_classes)
        score = gt_score.gather(-1, column.unsqueeze(-1)).squeeze(-1) * has_positive
        return varifocal_loss(pred, classes, score, backend=self.backend, **settings)

    def _check(self, pred_score, gt_score, label):
        """``(pred, gt_score, label)`` as ``(N, C)`` rows (float32 logits and scores), checked."""
        if not isinstance(pred_score, torch.Tensor) or not pred_score.is_floating_point():
            raise TypeError(f"pred_score must be a floating-point tensor of logits, got {type(pred_score).__name__}")
        if pred_score.dim() < 2:
            raise ValueError(
                f"pred_score must have at least 2 dimensions ((batch, queries, classes)), got shape "
                f"{tuple(pred_score.shape)}"
            )
        for name, value in (("gt_score", gt_score), ("label", label)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor shaped like pred_score, got {type(value).__name__}")
            if value.shape != pred_score.shape:
                raise ValueError(
                    f"{name} shape {tuple(value.shape)} must equal pred_score's shape {tuple(pred_score.shape)}"
                )
            _validation.check_same_device(pred_score, name, value)
        if not gt_score.is_floating_point():
            raise TypeError(f"gt_score must be a floating-point tensor of scores in [0, 1], got {gt_score.dtype}")
        num_classes = pred_score.shape[-1]
        pred = pred_score.float().reshape(-1, num_classes)  # ultralytics takes the BCE of float32 logits
        gt_score = gt_score.detach().float().reshape(-1, num_classes)
        label = label.detach().reshape(-1, num_classes)
        if label.numel() and _validation.values_known(label, self.validate):
            self._check_values(gt_score, label)
        return pred, gt_score, label

    def _check_values(self, gt_score, label):
        bad = (label != 0) & (label != 1)
        if bool(bad.any()):
            raise ValueError(f"label must hold 0 and 1 (a one-hot mask), got {_validation.first_bad_value(label, bad)}")
        bad = (gt_score != 0) & (label == 0)
        if bool(bad.any()):
            raise ValueError(
                "gt_score must be 0 where label is 0 (DETRLoss passes iou * one_hot), got "
                f"{_validation.first_bad_value(gt_score, bad)}"
            )
        if not self.multi_label:
            counts = (label != 0).sum(-1)
            bad = counts > 1
            if bool(bad.any()):
                raise ValueError(
                    "label rows must hold at most one positive (DETRLoss's one-hot), got "
                    f"{_validation.first_bad_value(counts, bad)} positives; pass multi_label=True for "
                    "rows with several"
                )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, multi_label={self.multi_label}, backend={self.backend!r}"


def patch_detr_loss(criterion, *, backend: str = "auto"):
    """Replace the Varifocal Loss of an ultralytics ``DETRLoss`` (``RTDETRDetectionLoss``, as
    ``RTDETRDetectionModel.init_criterion`` builds it with ``use_vfl=True``) by
    :class:`FusedVarifocalLoss` with its ``gamma`` and ``alpha``, in place; returns ``criterion``."""
    from ultralytics.models.utils.loss import DETRLoss

    if not isinstance(criterion, DETRLoss):
        raise TypeError(f"criterion must be an ultralytics DETRLoss (RT-DETR's), got {type(criterion).__name__}")
    vfl = getattr(criterion, "vfl", None)
    if vfl is None:
        raise ValueError(
            "criterion has no Varifocal Loss to replace (DETRLoss(use_vfl=False) scores classes with FocalLoss)"
        )
    criterion.vfl = FusedVarifocalLoss(gamma=vfl.gamma, alpha=vfl.alpha, backend=backend)
    return criterion


def enable_fused_varifocal(model, *, backend: str = "auto"):
    """Give an ultralytics RT-DETR model (``RTDETRDetectionModel``, an ``RTDETR``, a wrapped one)
    the fused Varifocal Loss: its criterion is built now if it has none and patched with
    :func:`patch_detr_loss`. Returns ``model``."""
    target = _unwrap(model)
    if not hasattr(target, "init_criterion"):
        raise TypeError(f"model must be an ultralytics model (with init_criterion), got {type(model).__name__}")
    criterion = getattr(target, "criterion", None)
    target.criterion = patch_detr_loss(criterion if criterion is not None else target.init_criterion(), backend=backend)
    return model


def varifocal_loss_callback(*, backend: str = "auto"):
    """A trainer callback (``model.add_callback("on_pretrain_routine_end", ...)``) that enables the fused
    Varifocal Loss on the RT-DETR model being trained and on its EMA copy."""
    backends.check_name(backend)

    def callback(trainer):
        enable_fused_varifocal(trainer.model, backend=backend)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        if ema is not None:
            enable_fused_varifocal(ema, backend=backend)

    return callback
