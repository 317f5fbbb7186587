"""Quality Focal Loss (GFL) and Varifocal Loss (VarifocalNet): sigmoid losses against an IoU-aware
target, fused like the sigmoid focal loss.

Both take the positives' quality scores either as class indices with a score per row
(``target (N, ...)`` with ``C`` as background, ``score (N, ...)``: no one-hot is built) or as a
dense float ``(N, C, ...)`` tensor of soft targets.
"""

from typing import Optional, Union

import torch

from .. import _validation, backends
from ..functional import sigmoid_term_loss
from ..modules import _TensorArgs, refuse_positional
from ..sigmoid_term import SigmoidTerm

Normalizer = Optional[Union[float, torch.Tensor]]


def quality_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    score: Optional[torch.Tensor] = None,
    *,
    beta: float = 2.0,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: Normalizer = None,
    backend: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """Quality Focal Loss (Li et al., Generalized Focal Loss; mmdetection's ``quality_focal_loss``).

    With ``s = sigmoid(input)`` and a target ``t`` in ``[0, 1]`` per element (the positive's
    quality score at its class, 0 elsewhere)::

        loss = BCE(input, t) * |t - s| ** beta

    The gradient flows through the modulating factor, as in the source.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ..., dk)``.
        target: class indices ``(N, d1, ..., dk)`` with ``C`` as background and
            ``ignore_index`` for rows to skip, or a dense float ``(N, C, ...)`` score tensor.
        score: with class indices, the positive's quality ``(N, d1, ..., dk)`` in ``[0, 1]``
            (None: 1); with dense targets it must be None.
        beta: the modulating exponent, a finite number ``>= 0``.
        weight: a tensor broadcastable to ``input`` (per anchor, class or element).
        ignore_index: class-index value whose rows give 0 and are left out of the mean.
        reduction: ``"none"`` (``input``'s shape), ``"sum"`` or ``"mean"`` (over the elements not
            ignored). mmdetection's per-anchor mean is ``reduction="sum", normalizer=N``.
        normalizer: divisor of the sum (mmdetection's ``avg_factor``), a finite positive number
            or a 0-dim tensor.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        validate: check class indices, scores and dense targets on the GPU too (a host sync).

    Returns:
        The loss in ``input``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`triton_focal.sigmoid_focal_loss`, and for a ``beta``
        that is not a finite number ``>= 0`` or a ``score`` that is not a float tensor shaped
        like ``target`` with values in ``[0, 1]``.
    """
    term = SigmoidTerm("quality", gamma=_validation.check_exponent("beta", beta))
    return sigmoid_term_loss(
        input,
        target,
        score,
        term,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
        validate=validate,
    )


def varifocal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    score: Optional[torch.Tensor] = None,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    detach_weight: bool = False,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: Normalizer = None,
    backend: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """Varifocal Loss (Zhang et al., VarifocalNet; mmdetection's ``varifocal_loss``, ultralytics'
    ``VarifocalLoss``, RT-DETR's ``loss_labels_vfl``).

    With ``s = sigmoid(input)`` and a target ``t`` in ``[0, 1]`` per element::

        loss = BCE(input, t) * w,   w = t (1 if not iou_weighted) on positives, alpha * s ** gamma elsewhere

    A positive is the row's class for class-index targets (ultralytics, RT-DETR: a positive
    with score 0 has weight 0), and an element with ``t > 0`` for dense targets (mmdetection).

    Args:
        input, target, score, weight, ignore_index, reduction, normalizer, backend, validate:
            as :func:`quality_focal_loss`.
        alpha: weight of the negatives, a finite number ``>= 0``.
        gamma: the negatives' exponent, a finite number ``>= 0``.
        iou_weighted: positives weighted by their score ``t`` (True) or by 1.
        detach_weight: no gradient through ``w`` (RT-DETR and transformers detach it;
            mmdetection and ultralytics keep it, the default).

    Returns:
        The loss in ``input``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`quality_focal_loss`, for ``alpha``/``gamma`` that are
        not finite numbers ``>= 0``, and for flags that are not bools.
    """
    term = SigmoidTerm(
        "varifocal",
        alpha=_validation.check_exponent("alpha", alpha),
        gamma=_validation.check_exponent("gamma", gamma),
        iou_weighted=_validation.check_flag("iou_weighted", iou_weighted),
        detach_weight=_validation.check_flag("detach_weight", detach_weight),
    )
    return sigmoid_term_loss(
        input,
        target,
        score,
        term,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
        validate=validate,
    )


class _ScoredSigmoidLoss(_TensorArgs):
    """What QFL's and VFL's modules share: reduction, normalizer, weight, ignore_index, backend."""

    def _store_common(self, weight, ignore_index, reduction, normalizer, backend):
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight must be a tensor broadcastable to input, got {type(weight).__name__}")
            _validation.check_weight_values(weight, validate=True)
        _validation.check_ignore_index(ignore_index)
        _validation.check_reduction(reduction)
        _validation.check_normalizer(normalizer, reduction, None, validate=True)
        backends.check_name(backend)
        self._store("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self._store("normalizer", normalizer, keep_graph=True)
        self.backend = backend

    def _common(self, normalizer):
        return dict(
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )


class QualityFocalLoss(_ScoredSigmoidLoss):
    """:func:`quality_focal_loss` as a module (keyword-only constructor, checked at construction).

    ``forward(input, target, score=None, normalizer=None)``: a ``normalizer`` given there (this
    batch's number of positives) overrides the stored one.
    """

    def __init__(
        self,
        *args,
        beta: float = 2.0,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        normalizer: Normalizer = None,
        backend: str = "auto",
    ):
        refuse_positional("QualityFocalLoss", args, ("beta",))
        super().__init__()
        self.beta = _validation.check_exponent("beta", beta)
        self._store_common(weight, ignore_index, reduction, normalizer, backend)

    def forward(self, input, target, score=None, normalizer=None):
        return quality_focal_loss(input, target, score, beta=self.beta, **self._common(normalizer))

    def extra_repr(self):
        return f"beta={self.beta}, reduction={self.reduction!r}, backend={self.backend!r}"


class VarifocalLoss(_ScoredSigmoidLoss):
    """:func:`varifocal_loss` as a module (keyword-only constructor, checked at construction).

    ``forward(input, target, score=None, normalizer=None)``: a ``normalizer`` given there
    overrides the stored one.
    """

    def __init__(
        self,
        *args,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        detach_weight: bool = False,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        normalizer: Normalizer = None,
        backend: str = "auto",
    ):
        refuse_positional("VarifocalLoss", args, ("alpha", "gamma"))
        super().__init__()
        self.alpha = _validation.check_exponent("alpha", alpha)
        self.gamma = _validation.check_exponent("gamma", gamma)
        self.iou_weighted = _validation.check_flag("iou_weighted", iou_weighted)
        self.detach_weight = _validation.check_flag("detach_weight", detach_weight)
        self._store_common(weight, ignore_index, reduction, normalizer, backend)

    def forward(self, input, target, score=None, normalizer=None):
        return varifocal_loss(
            input,
            target,
            score,
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=self.iou_weighted,
            detach_weight=self.detach_weight,
            **self._common(normalizer),
        )

    def extra_repr(self):
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"detach_weight={self.detach_weight}, reduction={self.reduction!r}, backend={self.backend!r}"
        )
