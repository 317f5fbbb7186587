"""Asymmetric Loss (Ridnik et al., ASL) for multi-label classification, fused like the sigmoid focal loss."""

from typing import Optional, Union

import torch

from .. import _validation, backends
from ..functional import sigmoid_term_loss
from ..modules import _TensorArgs, refuse_positional
from ..sigmoid_term import SigmoidTerm


def _term(gamma_pos, gamma_neg, clip, eps, detach_weight):
    return SigmoidTerm(
        "asymmetric",
        gamma=_validation.check_exponent("gamma_pos", gamma_pos),
        gamma_neg=_validation.check_exponent("gamma_neg", gamma_neg),
        clip=_validation.check_unit_interval("clip", clip, what="the negatives' probability shift"),
        eps=_validation.check_unit_interval("eps", eps, what="the clamp of the probabilities inside the logs"),
        detach_weight=_validation.check_flag("detach_weight", detach_weight),
    )


def asymmetric_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_weight: bool = False,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "sum",
    normalizer: Optional[Union[float, torch.Tensor]] = None,
    backend: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """Asymmetric Loss (Alibaba-MIIL's ``AsymmetricLoss``, timm's ``AsymmetricLossMultiLabel``).

    With ``s = sigmoid(input)``, the shifted negative probability ``s_m = max(s - clip, 0)`` and
    a target ``t`` in ``[0, 1]``::

        loss = -(t log(max(s, eps)) + (1 - t) log(max(1 - s_m, eps))) * (1 - p_t) ** (gamma_pos t + gamma_neg (1 - t))
        1 - p_t = t (1 - s) + (1 - t) s_m

    The logs are taken stably (``log s = -softplus(-x)``; without a clip ``log(1 - s) =
    -softplus(x)``), so this differs from the source only where its float32 ``1 - sigmoid(x)``
    rounds: negatives with ``clip=0`` and ``x`` above about 9, where the source is off by up to
    1e-3 relative and reaches its ``log(eps)`` floor at ``x ~ 16.6`` instead of ``log(1 / eps)``.
    The clamps (``eps``, ``clip``) are the source's, in every backend.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ..., dk)`` (any shape: targets are dense).
        target: float targets with ``input``'s shape, 0 or 1 (soft values allowed).
        gamma_pos, gamma_neg: the positives' and negatives' focusing exponents, ``>= 0``.
        clip: the negatives' probability shift in ``[0, 1)`` (0: none).
        eps: the clamp of the probabilities inside the logs, in ``[0, 1)``.
        detach_weight: no gradient through ``(1 - p_t) ** gamma_t`` (the source's
            ``disable_torch_grad_focal_loss``).
        weight: a tensor broadcastable to ``input``.
        reduction: ``"sum"`` (the default, as the source returns), ``"mean"`` or ``"none"``.
        normalizer: divisor of the sum, a finite positive number or a 0-dim tensor.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        validate: check the target values on the GPU too (a host sync).

    Returns:
        The loss in ``input``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`triton_focal.sigmoid_focal_loss` for dense targets, and
        for exponents that are not finite numbers ``>= 0`` or ``clip``/``eps`` outside ``[0, 1)``.
    """
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        kind = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"target of the asymmetric loss must be a float 0/1 tensor with input's shape, got {kind}")
    return sigmoid_term_loss(
        input,
        target,
        None,
        _term(gamma_pos, gamma_neg, clip, eps, detach_weight),
        weight=weight,
        ignore_index=-100,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
        validate=validate,
    )


class AsymmetricLoss(_TensorArgs):
    """:func:`asymmetric_loss` as a module (keyword-only constructor, checked at construction)."""

    def __init__(
        self,
        *args,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_weight: bool = False,
        weight: Optional[torch.Tensor] = None,
        reduction: str = "sum",
        normalizer: Optional[Union[float, torch.Tensor]] = None,
        backend: str = "auto",
    ):
        refuse_positional("AsymmetricLoss", args, ("gamma_pos", "gamma_neg", "clip", "eps"))
        super().__init__()
        self.term = _term(gamma_pos, gamma_neg, clip, eps, detach_weight)
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight must be a tensor broadcastable to input, got {type(weight).__name__}")
            _validation.check_weight_values(weight, validate=True)
        _validation.check_reduction(reduction)
        _validation.check_normalizer(normalizer, reduction, None, validate=True)
        backends.check_name(backend)
        self._store("weight", weight)
        self.reduction = reduction
        self._store("normalizer", normalizer, keep_graph=True)
        self.backend = backend

    def forward(self, input, target, normalizer=None):
        term = self.term
        return asymmetric_loss(
            input,
            target,
            gamma_pos=term.gamma,
            gamma_neg=term.gamma_neg,
            clip=term.clip,
            eps=term.eps,
            detach_weight=term.detach_weight,
            weight=self.weight,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )

    def extra_repr(self):
        term = self.term
        return (
            f"gamma_pos={term.gamma}, gamma_neg={term.gamma_neg}, clip={term.clip}, eps={term.eps}, "
            f"detach_weight={term.detach_weight}, reduction={self.reduction!r}, backend={self.backend!r}"
        )
