"""The public functional API: validate, pick a backend, reshape the result.

The math lives in ``reference.py`` (eager) and ``kernels/`` (Triton); this module only
checks arguments (``_validation``), chooses a backend (``backends``) and restores the
user's shapes. Every backend gives the same result, including at the edges the README's
"Semantics" section lists: masked (``-inf``) logits, NaN in ignored elements, a mean whose
denominator is 0, zero classes.
"""

import dataclasses
from typing import Optional, Union

import torch

from . import _validation, backends
from ._autograd_state import functorch_active
from .sigmoid_term import SigmoidTerm


def _autocast_to_float32(input):
    """Under autocast, losses run in float32 (autocast's policy for ``cross_entropy`` and
    ``binary_cross_entropy_with_logits``): the result is float32, as theirs is."""
    if not isinstance(input, torch.Tensor):  # validation names the argument
        return input
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        return input.float()
    return input


def _backend_for(backend, device):
    """The backend that runs: the named one, except under a ``torch.func`` transform (``vmap``,
    ``grad``, ``jacrev``, ...), where every backend runs the eager reference: plain torch ops,
    which every transform supports (the kernels and the compiled functions are opaque to them)."""
    name = backends.resolve(backend, device)
    return "reference" if functorch_active() else name


def focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: Union[float, torch.Tensor] = 2.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    backend: str = "auto",
    validate: bool = False,
    inplace_grad: bool = False,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    poly_epsilon: float = 0.0,
    element_weight: Optional[torch.Tensor] = None,
    normalizer: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    """Softmax focal loss over the class dimension, a drop-in for ``F.cross_entropy``.

    With ``p = softmax(input, dim=1)``, ``y`` the target class, ``a`` the alpha vector and
    ``w`` the weight vector, each element's loss is::

        f_c  = (1 - p_c) ** gamma * (-log p_c)
        loss = a_y * ((1 - eps) * w_y * f_y + (eps / C) * sum_c w_c * f_c)

    With ``gamma=0`` and ``alpha=None`` this equals ``F.cross_entropy`` (value and gradient).
    ``softcap`` replaces the logits by ``softcap * tanh(input / softcap)`` before all of
    this, and ``z_loss`` adds ``z_loss * logsumexp(z) ** 2`` to each non-ignored element.
    ``poly_epsilon`` adds Poly-1's ``poly_epsilon * w_y * (1 - p_y) ** (gamma_y + 1)``, and
    ``element_weight`` multiplies each element's whole loss (all of the above).

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (classes in dimension 1,
            channels-first as segmentation networks emit them; any strides), float16,
            bfloat16, float32 or float64.
            A ``-inf`` logit masks its class: it gets probability 0 and gradient 0.
        target: class indices, integer, ``()``, ``(N,)`` or ``(N, d1, ..., dk)``, in
            ``[0, C)`` or ``ignore_index``.
        gamma: focusing parameter ``>= 0``, or a ``(C,)`` tensor of per-class values.
        alpha: class balance factor multiplying the loss (not in the mean's denominator):
            a number, a ``(C,)`` tensor, or None for 1.
        weight: ``(C,)`` class weights with ``F.cross_entropy`` semantics (they enter the
            mean's denominator).
        ignore_index: target value whose elements give 0 loss, 0 gradient and are left out
            of the mean; their logits are not read (NaN padding there is harmless).
        reduction: ``"none"`` (loss shaped like ``target``), ``"sum"``, or ``"mean"`` (sum
            divided by the sum of ``w_y`` over non-ignored elements; 0, with a zero
            gradient, where that denominator is 0).
        label_smoothing: ``eps`` in ``[0, 1]``. A masked class (``p = 0``) adds 0 to the
            smoothing sum.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        validate: check class indices on the GPU too (costs a device-to-host sync; CPU
            tensors are always checked).
        inplace_grad: Triton backend only: write the gradient into ``input``'s storage
            (no extra memory; ``input`` must not be used afterwards). Ignored elsewhere.
        z_loss: PaLM's z-loss coefficient ``>= 0``. It is not multiplied by alpha, weight
            or smoothing; ``"mean"`` divides it by the number of non-ignored elements
            (Liger-Kernel's ``lse_square_scale``).
        softcap: ``c > 0`` caps the logits to ``c * tanh(input / c)`` (Gemma 2); None: off.
        poly_epsilon: Poly-1's ``eps`` (PolyLoss, Leng et al. 2022; optax's
            ``poly_loss_cross_entropy``): each non-ignored element gains
            ``eps * w_y * (1 - p_y) ** (gamma_y + 1)``, not multiplied by alpha (the paper's
            poly-1 focal loss adds it after alpha) nor changed by label smoothing. With
            ``gamma=0`` it is Poly-1 cross entropy, ``CE + eps * (1 - p_y)``. A finite number
            ``>= -1``: since ``-log p >= 1 - p``, an element's loss is then at least
            ``(1 + eps) * w_y * (1 - p_y) ** (gamma + 1) >= 0`` without alpha and smoothing
            (with ``alpha_y < 1`` that bound needs ``eps >= -alpha_y``, not enforced).
            The mean's denominator does not change.
        element_weight: a float tensor shaped like ``target`` (any strides; pass
            ``w.expand(target.shape)`` for a broadcast weight, stride 0): multiplies each
            element's whole loss (focal, smoothing, poly and z-loss parts). ``"mean"`` then
            divides the focal part by the sum of ``element_weight * w_y`` and the z-loss by
            the sum of ``element_weight`` over non-ignored elements, a weighted mean as
            ``weight`` gives ``F.cross_entropy`` (0, with a zero gradient, where that sum is
            0). mmseg's convention (divide by the element count) is ``reduction="sum",
            normalizer=count``. Values finite and ``>= 0`` (checked for CPU tensors, or with
            ``validate=True``); one that requires grad is differentiated by ``"reference"``
            and refused elsewhere.
        normalizer: divisor replacing the mean's (mmdet's ``avg_factor``): a finite positive
            number or a 0-dim tensor, the result is the sum of everything (z-loss included)
            divided by it; not with ``reduction="none"``. A tensor that requires grad gets
            its gradient; a number compiles nothing new.

    Returns:
        The loss in ``input``'s dtype: a 0-dim tensor, or ``target``'s shape for
        ``reduction="none"``.

    Raises:
        TypeError: ``input`` is not a dense floating-point tensor, ``target`` is not an integer
            tensor, or an argument has the wrong kind (``weight`` not a tensor, ``gamma`` or
            ``alpha`` neither a number nor a float tensor, ``ignore_index`` not an int,
            ``inplace_grad`` not a bool).
        ValueError: ``target``'s shape does not match ``input``'s; ``gamma``, ``alpha`` or
            ``weight`` is negative, inf or NaN, or not one value per class;
            ``label_smoothing`` is outside ``[0, 1]``; ``reduction`` or ``backend`` is
            unknown, or the backend cannot run here; a class index is outside ``[0, C)``
            (checked for CPU tensors, or with ``validate=True``); ``ignore_index`` does not
            fit in int64; tensors are on different devices; a ``gamma``, ``alpha``,
            ``weight`` or ``element_weight`` tensor requires grad on a backend other than
            ``"reference"`` (which differentiates them; pass them detached elsewhere);
            ``poly_epsilon`` is not a finite number ``>= -1``; ``element_weight`` does not
            have ``target``'s shape, or holds a negative, inf or NaN value (checked where
            known); ``normalizer`` is not a finite positive number, or is given with
            ``reduction="none"``. ``element_weight`` not a float tensor is a ``TypeError``.
    """
    if not isinstance(inplace_grad, bool):
        raise TypeError(f"inplace_grad must be a bool (True or False), got {inplace_grad!r}")
    input = _autocast_to_float32(input)
    args = _validation.softmax_args(
        input,
        target,
        gamma,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        validate,
        z_loss,
        softcap,
        check_indices=False,
        poly_epsilon=poly_epsilon,
        element_weight=element_weight,
        normalizer=normalizer,
    )
    name = _backend_for(backend, input.device)
    if name != "reference":
        _validation.refuse_learnable(
            f"backend={name!r}",
            alpha=args.alpha,
            weight=args.weight,
            gamma=args.gamma,
            element_weight=args.element_weight,
        )
    # The compile backend counts out-of-range indices of CPU targets in its own forward pass
    # (a separate check costs more than a tenth of a small CPU loss).
    if name != "compile" or args.target.device.type != "cpu":
        _validation.check_class_indices(args.target, args.input.shape[1], args.ignore_index, validate=validate)
    # The in-place gradient must mark the user's tensor as modified, not the view made here.
    extra = {"inplace_grad": True, "logits": input} if inplace_grad and name == "triton" else {}
    # Passed only when used, so a call without them is the same call on every backend.
    if args.z_loss > 0:
        extra["z_loss"] = args.z_loss
    if args.softcap is not None:
        extra["softcap"] = args.softcap
    if args.poly_epsilon != 0:
        extra["poly_epsilon"] = args.poly_epsilon
    if args.element_weight is not None:
        extra["element_weight"] = args.element_weight
    if args.normalizer is not None:
        extra["normalizer"] = args.normalizer
    loss = backends.load(name).softmax_focal_loss(
        args.input,
        args.target,
        gamma=args.gamma,
        alpha=args.alpha,
        weight=args.weight,
        ignore_index=args.ignore_index,
        reduction=args.reduction,
        label_smoothing=args.label_smoothing,
        **extra,
    )
    return loss.reshape(args.loss_shape) if reduction == "none" else loss


def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: Union[float, torch.Tensor] = 2.0,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    normalizer: Optional[Union[float, torch.Tensor]] = None,
    backend: str = "auto",
    validate: bool = False,
    poly_epsilon: float = 0.0,
) -> torch.Tensor:
    """One-vs-all sigmoid focal loss (RetinaNet), equal to ``torchvision.ops.sigmoid_focal_loss``.

    With ``p = sigmoid(input)`` and a target ``t`` in ``[0, 1]``::

        loss = (alpha_t * (1 - p_t) ** gamma * BCE(input, t) + eps * (1 - p_t) ** (gamma + 1)) * weight
        p_t = p t + (1 - p)(1 - t),  alpha_t = alpha t + (1 - alpha)(1 - t)  (1 if alpha < 0)

    ``eps`` is ``poly_epsilon`` (Poly-1, the PolyLoss paper's focal variant; 0 by default).

    Args:
        input: logits ``(N, C, d1, ..., dk)`` or ``(N, C)`` (any shape for dense targets).
        target: dense float targets with ``input``'s shape (soft values allowed), or integer
            class indices with ``input``'s shape minus dimension 1: element ``(n, c, ...)`` is
            positive iff ``target[n, ...] == c``; ``C`` is background (all negative);
            ``ignore_index`` rows give 0 and are left out of the mean (their logits are not
            read). No one-hot is built.
        alpha: weight of positives in ``[0, 1]``; negative for no weighting.
        gamma: focusing parameter ``>= 0``, or a ``(C,)`` tensor applied along dimension 1.
        reduction: ``"none"`` (``input``'s shape), ``"sum"`` or ``"mean"`` (over the elements
            that are not ignored).
        weight: tensor broadcastable to ``input`` (per anchor, per class, per element).
        ignore_index: class-index target value that ignores a whole row.
        normalizer: divisor replacing the mean's (number of positive anchors, mmdet's
            ``avg_factor``): a finite positive number or a 0-dim tensor; the result is
            ``sum / normalizer``. A tensor that requires grad gets its gradient.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
        validate: check class indices, dense target values and a tensor ``normalizer`` on
            the GPU too (costs a device-to-host sync; CPU tensors are always checked).
        poly_epsilon: Poly-1's ``eps``, a finite number ``>= -1``; not multiplied by
            ``alpha_t``, as the paper adds it.

    Returns:
        The loss in ``input``'s dtype.

    Raises:
        TypeError: ``input`` is not a floating-point tensor, ``target`` is neither float
            nor integer, or ``alpha``, ``gamma``, ``weight`` or ``ignore_index`` has the
            wrong kind.
        ValueError: ``target``'s shape fits neither form (an integer 0/1 mask of
            ``input``'s shape is told to pass floats); dense target values outside
            ``[0, 1]``, a class index outside ``[0, C]``, or a ``normalizer`` tensor that is
            not finite and positive (values checked for CPU tensors, or with
            ``validate=True``); ``alpha`` is inf or NaN; ``gamma`` or ``weight`` is
            negative, inf or NaN; ``normalizer`` is not a finite positive number, or is
            given with ``reduction="none"``; ``reduction`` or ``backend`` is unknown;
            tensors are on different devices; a ``gamma`` or ``weight`` tensor requires grad
            on a backend other than ``"reference"`` (which differentiates them);
            ``poly_epsilon`` is below -1 or not finite.
    """
    poly_epsilon = _validation.check_poly_epsilon(poly_epsilon)
    alpha = _validation.check_sigmoid_alpha(alpha)
    term = SigmoidTerm("focal", alpha=alpha, gamma=gamma, poly_epsilon=poly_epsilon)
    return sigmoid_term_loss(
        input,
        target,
        None,
        term,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
        validate=validate,
    )


def sigmoid_term_loss(input, target, score, term, *, weight, ignore_index, reduction, normalizer, backend, validate):
    """What every one-vs-all sigmoid loss shares: check the arguments once, choose the backend,
    compute ``term`` (a :class:`~triton_focal.sigmoid_term.SigmoidTerm` whose numbers the caller
    checked) per element, restore the user's shape. ``term.gamma`` is checked here (a number or,
    for the focal term, a per-class tensor)."""
    input = _autocast_to_float32(input)
    args = _validation.sigmoid_args(
        input, target, -1.0, term.gamma, weight, ignore_index, reduction, normalizer, validate
    )
    score = _validation.check_score(score, args, validate=validate)
    term = dataclasses.replace(term, gamma=args.gamma)
    name = _backend_for(backend, input.device)
    if name != "reference":
        _validation.refuse_learnable(f"backend={name!r}", weight=args.weight, gamma=args.gamma, score=score)
    loss = backends.load(name).sigmoid_loss(
        args.input,
        args.target,
        score,
        term=term,
        weight=args.weight,
        ignore_index=args.ignore_index,
        reduction=args.reduction,
        normalizer=args.normalizer,
    )
    return loss.reshape(args.loss_shape) if reduction == "none" else loss


def sigmoid_focal_loss_star(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = -1.0,
    gamma: float = 1.0,
    reduction: str = "none",
    backend: str = "auto",
) -> torch.Tensor:
    """FL*, the RetinaNet paper's appendix variant: ``alpha_t * softplus(-gamma x (2t - 1)) / gamma``.

    Args:
        input: logits of any shape with at least one dimension.
        target: dense float targets with ``input``'s shape.
        alpha: weight of positives; negative (default) for no weighting.
        gamma: sharpness ``> 0``.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.

    Returns:
        The loss in ``input``'s dtype.

    Raises:
        TypeError: ``input`` is not a floating-point tensor, ``target`` is not a
            floating-point tensor, or ``alpha`` is not a number.
        ValueError: shapes differ; target values outside ``[0, 1]`` (CPU tensors);
            ``alpha`` is inf or NaN; ``gamma`` is not a finite positive number;
            ``reduction`` or ``backend`` is unknown.
    """
    input = _autocast_to_float32(input)
    x, t, alpha, gamma, reduction = _validation.sigmoid_star_args(input, target, alpha, gamma, reduction)
    loss = backends.load(_backend_for(backend, input.device)).sigmoid_focal_loss_star(
        x, t, alpha=alpha, gamma=gamma, reduction=reduction
    )
    return loss.reshape(input.shape) if reduction == "none" else loss
