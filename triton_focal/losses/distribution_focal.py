"""Distribution Focal Loss (Generalized Focal Loss, GFL; the box loss of YOLOv8's ``DFLoss``).

A box side is predicted as a distribution over ``n`` bins ``0, ..., n - 1`` (``n`` logits), and
its target is a continuous position ``y`` in ``[0, n - 1]``. The loss is the cross entropy of
the two bins around ``y``, weighted by how close ``y`` is to each (mmdet's
``distribution_focal_loss``)::

    left = min(floor(y), n - 2),  right = left + 1
    loss = CE(x, left) * (right - y) + CE(x, right) * (y - left)

Its expectation ``sum_j j softmax(x)_j`` is the decoded side, which a box decoder computes
from the same logits; ``return_expectation=True`` returns it from the same pass.

Peers, reproduced (values and gradients, tested):

* mmdet ``distribution_focal_loss(pred, label, weight, reduction, avg_factor)``:
  ``distribution_focal_loss(pred, label, weight=weight, reduction=reduction, normalizer=avg_factor)``
  (mmdet's own targets stop below ``n - 1``; at ``y = n - 1`` mmdet indexes past the last bin).
* ultralytics ``DFLoss(reg_max)(pred, target)`` (``(M * 4, n)`` and ``(M, 4)``, mean over the 4
  sides) clamps the targets to ``[0, n - 1 - 0.01]`` first: pass the same clamp,
  ``distribution_focal_loss(pred.view(M, 4, n), target.clamp(0, n - 1.01), reduction="none").mean(-1)``;
  ``BboxLoss``'s ``(DFLoss(...) * weight).sum() / target_scores_sum`` over the foreground
  anchors is ``distribution_focal_loss(pred_dist.view(B, A, 4, n), target_ltrb.clamp(0, n - 1.01),
  mask=fg_mask[..., None].expand(B, A, 4), weight=target_scores.sum(-1, keepdim=True),
  reduction="sum", normalizer=4 * target_scores_sum)``, with no boolean gather.
"""

from typing import Optional, Union

import torch
from torch import nn

from .. import _validation, backends
from ..functional import _autocast_to_float32, _backend_for
from ..modules import refuse_positional


def distribution_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    normalizer: Optional[Union[float, torch.Tensor]] = None,
    return_expectation: bool = False,
    backend: str = "auto",
    validate: bool = False,
):
    """Distribution Focal Loss of bin logits against continuous positions.

    With ``x`` a row's ``n`` bin logits and ``y`` its target::

        left = min(floor(y), n - 2),  right = left + 1
        loss = CE(x, left) * (right - y) + CE(x, right) * (y - left)

    At an integer ``y`` one bin has the whole weight: ``left`` for ``y < n - 1`` (mmdet's
    choice), ``right`` for ``y = n - 1``, so the loss is continuous in ``y`` over ``[0, n - 1]``.
    A bin of weight 0 adds 0 even where its logit is ``-inf``.

    Args:
        input: bin logits ``(..., n)``, bins last (YOLOv8's ``(B, A, 4, n)`` as it is; any
            strides), ``n >= 2``, float16, bfloat16, float32 or float64.
        target: float positions ``(...)`` (``input``'s shape without the bins) in ``[0, n - 1]``.
        mask: bool ``(...)`` like ``target``: True where the row counts. A masked row gives 0
            loss, 0 gradient and an expectation of 0, is left out of the mean, and its
            logits and target are not read (padding, NaN included, is harmless). None: all count.
        weight: float tensor broadcastable to ``target`` (per box side, per anchor):
            multiplies each row's loss; not in the mean's divisor (mmdet's convention).
        reduction: ``"none"`` (``target``'s shape), ``"sum"``, or ``"mean"`` (the sum over the
            unmasked rows divided by their count; 0, with a zero gradient, when none is left).
        normalizer: replaces the mean's divisor (mmdet's ``avg_factor``): a finite positive
            number or a 0-dim tensor; the result is ``sum / normalizer``. A tensor that
            requires grad gets its gradient.
        return_expectation: also return the expectation ``sum_j j softmax(x)_j`` per row
            (``target``'s shape, ``input``'s dtype), differentiable, 0 on masked rows.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        validate: check target values and a tensor ``normalizer`` on the GPU too (a host
            sync; CPU tensors are always checked).

    Returns:
        The loss in ``input``'s dtype, or ``(loss, expectation)`` with ``return_expectation``.

    Raises:
        TypeError: ``input`` is not a dense floating-point tensor; ``target`` is not a float
            tensor; ``mask`` is not a bool tensor; ``weight`` is not a float tensor.
        ValueError: fewer than 2 bins; ``target``'s or ``mask``'s shape does not match;
            ``weight`` is not broadcastable to ``target``, or negative, inf or NaN; a target
            outside ``[0, n - 1]`` or NaN on an unmasked row (checked for CPU tensors, or with
            ``validate=True``; elsewhere that row's loss, gradient and expectation are NaN);
            ``normalizer`` is not finite and positive, or is given with ``reduction="none"``;
            ``reduction`` or ``backend`` is unknown; tensors are on different devices; a
            ``weight`` or ``target`` that requires grad on a backend other than ``"reference"``.
    """
    if not isinstance(return_expectation, bool):
        raise TypeError(f"return_expectation must be a bool (True or False), got {return_expectation!r}")
    input = _autocast_to_float32(input)
    args = _validation.distribution_args(input, target, mask, weight, reduction, normalizer, validate)
    name = _backend_for(backend, input.device)
    if name != "reference":
        _validation.refuse_learnable(f"backend={name!r}", weight=weight, target=target)
    result = backends.load(name).distribution_focal_loss(
        args.input,
        args.target,
        mask=args.mask,
        weight=args.weight,
        reduction=args.reduction,
        normalizer=args.normalizer,
        return_expectation=return_expectation,
    )
    loss, expectation = result if return_expectation else (result, None)
    if reduction == "none":
        loss = loss.reshape(args.loss_shape)
    return (loss, expectation.reshape(args.loss_shape)) if return_expectation else loss


class DistributionFocalLoss(nn.Module):
    """Distribution Focal Loss (GFL, YOLOv8's DFL); :func:`distribution_focal_loss` documents
    the formula and every argument.

    Args:
        reduction: ``"mean"`` (default, over the unmasked rows), ``"sum"`` or ``"none"``.
        normalizer: divisor replacing the mean's (mmdet's ``avg_factor``); ``forward`` can pass
            this batch's value instead.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.

    Shape:
        - input: ``(..., n)`` bin logits, ``n >= 2``.
        - target: ``(...)`` float positions in ``[0, n - 1]``; mask: bool ``(...)``; weight:
          broadcastable to ``(...)``.
        - output: a scalar, or ``(...)`` with ``reduction="none"``.

    Raises:
        TypeError: an argument given by position (the constructor takes keywords only).
        ValueError: an unknown ``reduction`` or ``backend``; a ``normalizer`` that is not
            finite and positive, or set with ``reduction="none"``. ``forward`` raises what
            :func:`distribution_focal_loss` raises.

    Example::

        criterion = DistributionFocalLoss(reduction="sum")
        loss = criterion(pred_dist, target_ltrb, mask=fg, weight=w, normalizer=num_pos)  # (B, A, 4, 16)
    """

    def __init__(
        self,
        *args,
        reduction: str = "mean",
        normalizer: Optional[Union[float, torch.Tensor]] = None,
        backend: str = "auto",
    ):
        """Check the arguments (see the class docstring)."""
        refuse_positional("DistributionFocalLoss", args, ("reduction", "normalizer"))
        super().__init__()
        _validation.check_reduction(reduction)
        _validation.check_normalizer(normalizer, reduction, None, validate=True)
        backends.check_name(backend)
        self.reduction = reduction
        # A tensor normalizer is a buffer (.to() moves it, state_dict saves it); one that
        # requires grad is kept as given and gets its gradient.
        if isinstance(normalizer, torch.Tensor):
            self.register_buffer("normalizer", normalizer if normalizer.requires_grad else normalizer.detach().clone())
        else:
            self.normalizer = normalizer
        self.backend = backend

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        normalizer=None,
        return_expectation: bool = False,
    ):
        """The loss of ``input`` against ``target`` (and the expectation with
        ``return_expectation``). ``normalizer`` given here overrides the stored one."""
        return distribution_focal_loss(
            input,
            target,
            mask=mask,
            weight=weight,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            return_expectation=return_expectation,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """Every argument."""
        normalizer = self.normalizer
        shown = f"tensor({normalizer.item():g})" if isinstance(normalizer, torch.Tensor) else repr(normalizer)
        return f"reduction={self.reduction!r}, normalizer={shown}, backend={self.backend!r}"
