"""``torch.nn.Module`` wrappers of the functional API: :class:`FocalLoss` (softmax, a drop-in
for ``nn.CrossEntropyLoss``) and :class:`SigmoidFocalLoss` (one-vs-all, RetinaNet).

Arguments are checked when the module is built, so a bad ``alpha`` fails at construction
rather than at the first forward. Tensor arguments (alpha, weight, per-class gamma) are
registered as buffers (a sigmoid ``normalizer`` tensor too), so ``module.to(device)`` moves them
and ``state_dict`` saves them. A buffer is not learned: a tensor that requires grad is refused
(``ValueError``), except a ``normalizer``, which keeps its graph.
"""

from typing import Optional, Union

import torch
from torch import nn

from . import _validation, backends, functional

# A module's repr lists per-class tensors up to this many values, and their length beyond.
_REPR_MAX_VALUES = 8


def _describe(value):
    """A short repr of a number, None, or a per-class tensor."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    if value.numel() <= _REPR_MAX_VALUES:
        return "tensor([" + ", ".join(f"{v:g}" for v in value.flatten().tolist()) + "])"
    return f"<tensor of shape {tuple(value.shape)}>"


def refuse_positional(module, args, order):
    """Module constructors take keywords only (``FocalLoss(gamma=2.0)``): the losses' options
    come in different orders in every peer library, so a positional value would silently
    land on the wrong one. ``order`` names what positional values used to mean, for the hint.

    Raises:
        TypeError: ``args`` is not empty; the message names the keyword each value meant.
    """
    if not args:
        return
    meant = ", ".join(f"{name}={value!r}" for name, value in zip(order, args))
    raise TypeError(
        f"{module} takes keyword arguments only: got {len(args)} positional "
        f"(pass {meant}{', ...' if len(args) > len(order) else ''})"
    )


class _TensorArgs(nn.Module):
    """Stores tensor-or-scalar arguments, tensors as buffers."""

    def _store(self, name, value, *, keep_graph=False):
        """A tensor becomes a buffer (a copy). One that requires grad is refused, since a buffer
        is not learned, unless ``keep_graph``: then the tensor itself is kept, graph and all."""
        if isinstance(value, torch.Tensor):
            if value.requires_grad and keep_graph:
                self.register_buffer(name, value)
                return
            if value.requires_grad:
                raise ValueError(
                    f"{name} requires grad, but {type(self).__name__} keeps {name} as a buffer, which is not "
                    f"learned; pass {name}.detach(), or call the functional loss with {name}=... and "
                    "backend='reference', which differentiates it"
                )
            self.register_buffer(name, value.detach().clone())
        else:
            setattr(self, name, value)


class FocalLoss(_TensorArgs):
    """Softmax focal loss, a drop-in for ``nn.CrossEntropyLoss``.

    Each element's loss is ``a_y * ((1 - eps) * w_y * f_y + (eps / C) * sum_c w_c * f_c)``
    with ``f_c = (1 - p_c) ** gamma * (-log p_c)`` and ``p = softmax(input, dim=1)``; with
    ``gamma=0`` it equals ``nn.CrossEntropyLoss`` (value and gradient). The computation is
    :func:`triton_focal.focal_loss`, which documents every argument.

    Args:
        gamma: focusing parameter ``>= 0``, or a ``(C,)`` tensor of per-class values.
        alpha: factor multiplying the loss (not the mean's denominator): a number, a
            ``(C,)`` tensor, or None for 1.
        weight: ``(C,)`` class weights with ``nn.CrossEntropyLoss`` semantics.
        ignore_index: target value left out of the loss, the gradient and the mean.
        reduction: ``"mean"`` (``nn.CrossEntropyLoss``'s weighted mean; 0 where its
            denominator is 0), ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in ``[0, 1]``.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        z_loss: coefficient of PaLM's z-loss ``z_loss * logsumexp(z) ** 2`` per element.
        softcap: ``c > 0`` caps the logits to ``c * tanh(input / c)``; None: off.
        inplace_grad: Triton backend only: the gradient overwrites the logits' storage
            (no extra memory; the logits must not be used after the loss).
        poly_epsilon: Poly-1's ``eps >= -1``: adds ``eps * w_y * (1 - p_y) ** (gamma + 1)``
            per element (not multiplied by alpha).
        normalizer: divisor replacing the mean's (mmdet's ``avg_factor``): the result is the
            sum of every element's loss divided by it; ``forward`` can pass this batch's
            value instead. A tensor is kept as a buffer (one that requires grad as given,
            and it gets its gradient).

    Shape:
        - input: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dk)`` logits, classes in dimension 1.
        - target: ``(N,)``, ``()`` or ``(N, d1, ..., dk)`` class indices in ``[0, C)`` or
          ``ignore_index``.
        - element_weight (``forward``, optional): floats ``>= 0`` shaped like ``target``,
          multiplying each element's loss (the mean is then weighted by them).
        - output: a scalar, or ``target``'s shape with ``reduction="none"``.

    Raises:
        TypeError: an argument is given by position (the constructor takes keywords only;
            the message names the keyword) or has the wrong kind (``alpha`` a list,
            ``weight`` not a tensor, ``inplace_grad`` not a bool).
        ValueError: an argument is out of range (``gamma``, ``alpha`` or ``weight`` negative,
            inf or NaN; ``label_smoothing`` outside ``[0, 1]``; ``poly_epsilon`` below -1 or
            not finite; ``normalizer`` not finite and positive, or set with
            ``reduction="none"``; an unknown ``reduction`` or ``backend``; a per-class tensor
            that requires grad: buffers are not learned), at construction. ``forward`` raises
            what :func:`triton_focal.focal_loss` raises.

    Example::

        criterion = FocalLoss(gamma=2.0, ignore_index=255)   # was nn.CrossEntropyLoss(ignore_index=255)
        loss = criterion(logits, labels)                       # logits (N, C, H, W), labels (N, H, W)
    """

    def __init__(
        self,
        *args,
        gamma: Union[float, torch.Tensor] = 2.0,
        alpha: Optional[Union[float, torch.Tensor]] = None,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        backend: str = "auto",
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        inplace_grad: bool = False,
        poly_epsilon: float = 0.0,
        normalizer: Optional[Union[float, torch.Tensor]] = None,
    ):
        """Check the arguments (see the class docstring) and keep tensors as buffers."""
        refuse_positional("FocalLoss", args, ("gamma", "alpha", "weight", "ignore_index", "reduction"))
        super().__init__()
        # The class count is known only at the first forward; everything else is checked now.
        _validation.check_per_class("gamma", gamma, None, None, validate=True)
        if alpha is not None:
            _validation.check_per_class("alpha", alpha, None, None, validate=True)
        if weight is not None:
            _validation.check_per_class("weight", weight, None, None, validate=True, allow_scalar=False)
        _validation.check_ignore_index(ignore_index)
        _validation.check_reduction(reduction)
        _validation.check_label_smoothing(label_smoothing)
        backends.check_name(backend)
        _validation.check_z_loss(z_loss)
        _validation.check_softcap(softcap)
        if not isinstance(inplace_grad, bool):
            raise TypeError(f"inplace_grad must be a bool (True or False), got {inplace_grad!r}")
        _validation.check_poly_epsilon(poly_epsilon)
        _validation.check_normalizer(normalizer, reduction, None, validate=True)
        self._store("gamma", gamma)
        self._store("alpha", alpha)
        self._store("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_grad = inplace_grad
        self.poly_epsilon = poly_epsilon
        # As SigmoidFocalLoss's: a tensor is a buffer, one that requires grad kept as given.
        self._store("normalizer", normalizer, keep_graph=True)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        element_weight: Optional[torch.Tensor] = None,
        normalizer: Optional[Union[float, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The focal loss of ``input`` logits ``(N, C, ...)`` against class indices ``target``
        ``(N, ...)``: a scalar, or ``target``'s shape with ``reduction="none"``.
        ``element_weight`` (shaped like ``target``) weights this batch's elements;
        ``normalizer`` given here (this batch's divisor) overrides the stored one."""
        return functional.focal_loss(
            input,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace_grad=self.inplace_grad,
            poly_epsilon=self.poly_epsilon,
            element_weight=element_weight,
            normalizer=self.normalizer if normalizer is None else normalizer,
        )

    def extra_repr(self) -> str:
        """Every argument, per-class tensors shown by value when short."""
        fields = [
            f"gamma={_describe(self.gamma)}",
            f"alpha={_describe(self.alpha)}",
            f"weight={_describe(self.weight)}",
            f"ignore_index={self.ignore_index}",
            f"reduction={self.reduction!r}",
            f"label_smoothing={self.label_smoothing}",
            f"backend={self.backend!r}",
        ]
        # The optional extras appear only when on, so a plain module's repr stays short.
        if self.z_loss:
            fields.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            fields.append(f"softcap={self.softcap}")
        if self.inplace_grad:
            fields.append("inplace_grad=True")
        if self.poly_epsilon:
            fields.append(f"poly_epsilon={self.poly_epsilon}")
        if self.normalizer is not None:
            fields.append(f"normalizer={_describe(self.normalizer)}")
        return ", ".join(fields)


class SigmoidFocalLoss(_TensorArgs):
    """One-vs-all sigmoid focal loss (RetinaNet), equal to ``torchvision.ops.sigmoid_focal_loss``.

    With ``p = sigmoid(input)`` and a target ``t`` in ``[0, 1]``, each element's loss is
    ``alpha_t * (1 - p_t) ** gamma * BCE(input, t) * weight``. The computation is
    :func:`triton_focal.sigmoid_focal_loss`, which documents every argument.

    Args:
        alpha: weight of positives in ``[0, 1]``; negative for no weighting.
        gamma: focusing parameter ``>= 0``, or a ``(C,)`` tensor applied along dimension 1.
        reduction: ``"none"`` (default, as torchvision), ``"sum"`` or ``"mean"``.
        weight: tensor broadcastable to the input (per anchor, per class, per element).
        ignore_index: class-index target value that ignores a whole row.
        normalizer: divisor replacing the mean's (mmdet's ``avg_factor``); ``forward`` can
            pass this batch's value instead.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.

    Shape:
        - input: ``(N, C)`` or ``(N, C, d1, ..., dk)`` logits (any shape with dense targets).
        - target: dense floats in ``[0, 1]`` with ``input``'s shape, or integer class indices
          ``(N, d1, ..., dk)`` where ``C`` is background.
        - output: a scalar, or ``input``'s shape with ``reduction="none"``.

    Raises:
        TypeError: an argument is given by position (the constructor takes keywords only;
            the message names the keyword) or has the wrong kind (``alpha`` not a number,
            ``weight`` not a tensor).
        ValueError: an argument is out of range (``alpha`` inf or NaN; ``gamma`` or
            ``weight`` negative, inf or NaN; ``normalizer`` not finite and positive, or set
            with ``reduction="none"``; an unknown ``reduction`` or ``backend``; a ``gamma`` or
            ``weight`` tensor that requires grad), at construction. ``forward`` raises what
            :func:`triton_focal.sigmoid_focal_loss` raises.

    Example::

        criterion = SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
        loss = criterion(cls_logits, labels, normalizer=num_pos)   # (A, C), (A,) with C = background
    """

    def __init__(
        self,
        *args,
        alpha: float = 0.25,
        gamma: Union[float, torch.Tensor] = 2.0,
        reduction: str = "none",
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        normalizer: Optional[Union[float, torch.Tensor]] = None,
        backend: str = "auto",
    ):
        """Check the arguments (see the class docstring) and keep tensors as buffers."""
        refuse_positional("SigmoidFocalLoss", args, ("alpha", "gamma", "reduction", "weight"))
        super().__init__()
        _validation.check_sigmoid_alpha(alpha)
        _validation.check_per_class("gamma", gamma, None, None, validate=True)
        _validation.check_reduction(reduction)
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight must be a tensor broadcastable to input, got {type(weight).__name__}")
            _validation.check_weight_values(weight, validate=True)
        _validation.check_ignore_index(ignore_index)
        _validation.check_normalizer(normalizer, reduction, None, validate=True)
        backends.check_name(backend)
        self.alpha = alpha
        self._store("gamma", gamma)
        self._store("weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        # A tensor normalizer is a buffer: .to() moves it and state_dict saves it; one that
        # requires grad is kept as given and gets its gradient.
        self._store("normalizer", normalizer, keep_graph=True)
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer=None) -> torch.Tensor:
        """The sigmoid focal loss of ``input`` against ``target``. ``normalizer`` given here
        (e.g. this batch's number of positives) overrides the stored one."""
        return functional.sigmoid_focal_loss(
            input,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """Every argument, per-class tensors shown by value when short."""
        fields = [
            f"alpha={self.alpha}",
            f"gamma={_describe(self.gamma)}",
            f"reduction={self.reduction!r}",
            f"weight={_describe(self.weight)}",
            f"ignore_index={self.ignore_index}",
            f"normalizer={_describe(self.normalizer)}",
            f"backend={self.backend!r}",
        ]
        return ", ".join(fields)
