"""The eager reference: the README's math in plain PyTorch, written to be read.

Every backend computes exactly this. The functions take the canonical arguments that
``triton_focal._validation`` produces (logits viewed as ``(N, C, P)``, targets as
``(N, P)``, alpha/weight/gamma as scalars or ``(C,)`` tensors) and compute in float32
(float64 for float64 input), returning the input's dtype. Gradients come from autograd
through this composition, so it also has second derivatives. It is kept free of NaN/inf
for every finite input, for masked (``-inf``) non-target logits, and for NaN or inf in
ignored elements; a mean over a zero denominator is 0.
"""

import contextlib
import math

import torch
import torch.nn.functional as F

from .sigmoid_term import SigmoidTerm


def compute_dtype(dtype):
    """Every sum, exp and log runs in float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_class(value, ref):
    """A scalar, or a ``(C,)`` tensor broadcast over ``(N, C, P)``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=ref.device, dtype=ref.dtype).view(1, -1, 1)
    return value


def at_target(value, safe_target, ref):
    """Each element's value of a per-class argument, ``(N, P)``: a ``(C,)`` tensor indexed by
    the target class; a scalar stays a scalar, None means 1."""
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor):
        return value.to(device=ref.device, dtype=ref.dtype)[safe_target]
    return value


def ignored_to_zero(x, valid):
    """Logits of ignored elements replaced by 0 before anything reads them: a NaN or inf
    there (padding) then reaches neither the loss nor the gradient, which is 0 for them."""
    return torch.where(valid, x, torch.zeros_like(x))


def focal_weight(one_minus_p, gamma):
    """``(1 - p) ** gamma`` with ``0 ** 0 == 1`` and a finite gradient for every ``gamma >= 0``.

    Clamping at the smallest normal number keeps ``(1 - p) ** (gamma - 1)``, which autograd
    forms, finite; where the clamp acts the true value of the loss is below that number.
    """
    return one_minus_p.clamp_min(torch.finfo(one_minus_p.dtype).tiny) ** gamma


def class_focal_loss(log_p, gamma):
    """``f = (1 - p) ** gamma * (-log p)`` from ``log p``; ``1 - p = -expm1(log p)`` is exact
    near ``p = 1``, where ``1 - exp(log p)`` cancels."""
    return focal_weight(-torch.expm1(log_p), gamma) * -log_p


def reduce_loss(loss, reduction, denominator):
    """``none`` / ``sum`` / ``mean``, where a mean over a zero denominator is 0 with a zero gradient.

    The denominator is 0 when every element is ignored, or when every present class has
    weight 0; label smoothing can leave a nonzero sum there, and the mean is still 0.
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    has_denominator = denominator > 0
    safe = torch.where(has_denominator, denominator, torch.ones_like(denominator))
    return torch.where(has_denominator, total / safe, torch.zeros_like(total))


def softmax_mean_denominator(target, weight, ignore_index, dtype):
    """``F.cross_entropy``'s mean divisor: the sum of ``w_y`` over the non-ignored elements
    (their count without ``weight``), a device tensor (no host sync)."""
    valid = target != ignore_index
    if weight is None or weight.shape[0] == 0:  # no classes: validation left only ignored elements
        return valid.sum(dtype=dtype)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long().clamp(0, weight.shape[0] - 1)
    return torch.where(valid, weight.to(dtype)[safe_target], torch.zeros((), dtype=dtype, device=target.device)).sum()


def softcap_logits(x, softcap):
    """Gemma 2's logit softcapping, ``softcap * tanh(x / softcap)``; ``None`` leaves ``x`` as is."""
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def z_loss_term(x, valid, z_loss):
    """PaLM's z-loss of each row, ``z_loss * logsumexp(x) ** 2``, 0 on ignored rows (``(N, P)``)."""
    lse = torch.logsumexp(x, dim=1)
    return torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))


def softmax_focal_loss(
    input,
    target,
    *,
    gamma,
    alpha,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss=0.0,
    softcap=None,
    poly_epsilon=0.0,
    element_weight=None,
    normalizer=None,
):
    """Softmax focal loss of ``(N, C, P)`` logits against ``(N, P)`` class indices.

    ``softcap`` caps the logits first (everything below sees the capped ones); ``z_loss``
    adds ``z_loss * lse ** 2`` per non-ignored row, outside alpha, weight and smoothing, and
    its mean divides by the number of non-ignored rows (Liger-Kernel's convention).

    ``poly_epsilon`` adds Poly-1's ``eps * w_y * (1 - p_y) ** (gamma_y + 1)`` (after alpha, as
    the PolyLoss paper's focal code does; smoothing leaves it alone). ``element_weight``
    (``(N, P)``) multiplies each element's whole loss, and the mean divides by the sums of
    ``element_weight * w_y`` (focal part) and of ``element_weight`` (z-loss) over the
    non-ignored elements: a weighted mean. ``normalizer`` divides the sum of everything.
    """
    num_classes = input.shape[1]
    valid = target != ignore_index
    x = softcap_logits(ignored_to_zero(input.to(compute_dtype(input.dtype)), valid.unsqueeze(1)), softcap)
    if num_classes == 0:  # validation let through only ignored elements: nothing to sum
        nothing = x.sum(dim=1)
        if normalizer is not None and reduction != "none":
            return (nothing.sum() / normalizer).to(input.dtype)
        return reduce_loss(nothing, reduction, torch.zeros((), dtype=x.dtype, device=x.device)).to(input.dtype)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()  # (N, P)

    log_p = F.log_softmax(x, dim=1)
    # The target's term is taken from its own log p: a masked (-inf) logit elsewhere never
    # enters it, and a -inf target logit gives an infinite loss, as in F.cross_entropy.
    log_p_target = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    focal_target = class_focal_loss(log_p_target, at_target(gamma, safe_target, x))
    loss = (1.0 - label_smoothing) * at_target(weight, safe_target, x) * focal_target
    if label_smoothing > 0:
        # A class with p = 0 (a -inf, masked logit) adds 0 to the smoothing sum, where
        # (1 - p) ** gamma * -log p would be inf; log p = 0 stands in for it, as its term is
        # 0, and the where sends the masked class no gradient.
        log_p = torch.where(log_p == -math.inf, torch.zeros_like(log_p), log_p)
        w = per_class(weight, x) if weight is not None else 1.0
        loss = loss + (label_smoothing / num_classes) * (w * class_focal_loss(log_p, per_class(gamma, x))).sum(dim=1)
    if alpha is not None:
        loss = at_target(alpha, safe_target, x) * loss
    if poly_epsilon != 0:
        # Poly-1: eps * (1 - p_y) ** (gamma_y + 1), weighted like the target's term.
        poly = focal_weight(-torch.expm1(log_p_target), at_target(gamma, safe_target, x) + 1)
        loss = loss + poly_epsilon * at_target(weight, safe_target, x) * poly

    loss = torch.where(valid, loss, torch.zeros_like(loss))
    z_part = z_loss_term(x, valid, z_loss) if z_loss > 0 else None
    if element_weight is not None:
        # Read on non-ignored elements only, as their logits are.
        element_weight = torch.where(valid, element_weight.to(x.dtype), torch.zeros_like(loss))
        loss = element_weight * loss
        z_part = None if z_part is None else element_weight * z_part
        denominator = (element_weight * at_target(weight, safe_target, x)).sum()
        z_denominator = element_weight.sum()
    else:
        denominator = softmax_mean_denominator(target, weight, ignore_index, x.dtype)
        z_denominator = valid.sum(dtype=x.dtype)
    if normalizer is not None and reduction != "none":
        # mmdet's avg_factor: the sum of everything, z-loss included, over one divisor.
        total = loss.sum() if z_part is None else loss.sum() + z_part.sum()
        return (total / normalizer).to(input.dtype)
    loss = reduce_loss(loss, reduction, denominator)
    if z_part is not None:
        loss = loss + reduce_loss(z_part, reduction, z_denominator)
    return loss.to(input.dtype)


def dense_targets(input, target, ignore_index):
    """Class-index targets ``(N, P)`` as a one-hot ``(N, C, P)`` float tensor and a row mask.

    ``target == C`` is background (all classes negative) and ``ignore_index`` rows are masked.
    """
    num_classes = input.shape[1]
    valid = target != ignore_index
    classes = torch.arange(num_classes, device=input.device).view(1, -1, 1)
    one_hot = (target.unsqueeze(1) == classes).to(compute_dtype(input.dtype))
    return one_hot, valid.unsqueeze(1).expand_as(one_hot)


def binary_cross_entropy_with_logits(x, t):
    """``F.binary_cross_entropy_with_logits`` per element, as ``t * softplus(-x) + (1 - t) *
    softplus(x)``, where a factor ``t`` or ``1 - t`` that is 0 contributes 0 even at an
    infinite logit: a ``+inf`` logit with target 1 (``-inf`` with target 0) has loss 0 and
    gradient 0, where ``F.binary_cross_entropy_with_logits`` gives NaN."""
    zero = torch.zeros_like(x)
    return torch.where(t > 0, t * F.softplus(-x), zero) + torch.where(t < 1, (1 - t) * F.softplus(x), zero)


def _focal_term(x, t, term):
    """The sigmoid focal loss (RetinaNet), and Poly-1's ``(1 - p_t) ** (gamma + 1)`` outside ``alpha_t``."""
    # 1 - p_t = (1 - p) t + p (1 - t), with 1 - p = sigmoid(-x): no cancellation.
    one_minus_p_t = torch.sigmoid(-x) * t + torch.sigmoid(x) * (1 - t)
    gamma = per_class(term.gamma, x)
    loss = focal_weight(one_minus_p_t, gamma) * binary_cross_entropy_with_logits(x, t)
    if term.alpha >= 0:
        loss = (term.alpha * t + (1 - term.alpha) * (1 - t)) * loss
    if term.poly_epsilon:
        loss = loss + term.poly_epsilon * focal_weight(one_minus_p_t, gamma + 1)
    return loss


def _quality_term(x, t, term):
    """Quality Focal Loss (GFL; mmdetection's ``quality_focal_loss``): ``BCE(x, t) * |t - s| ** beta``,
    negatives with ``t = 0``; ``beta`` is ``term.gamma``."""
    return binary_cross_entropy_with_logits(x, t) * focal_weight((torch.sigmoid(x) - t).abs(), term.gamma)


def _varifocal_term(x, t, positive, term):
    """Varifocal Loss (VarifocalNet; mmdetection's ``varifocal_loss``, ultralytics, RT-DETR):
    ``BCE(x, t) * w`` with ``w = t`` (or 1) on positives and ``alpha * s ** gamma`` elsewhere."""
    s = torch.sigmoid(x)
    if term.detach_weight:
        s = s.detach()
    negative_weight = term.alpha * focal_weight(s, term.gamma)
    positive_weight = t if term.iou_weighted else torch.ones_like(t)
    return binary_cross_entropy_with_logits(x, t) * torch.where(positive, positive_weight, negative_weight)


def _asymmetric_term(x, t, term):
    """Asymmetric Loss (Alibaba-MIIL's ``AsymmetricLoss``, timm's ``AsymmetricLossMultiLabel``), as
    its source writes it: the negatives' probability shifted by ``clip``, both logs clamped at
    ``eps`` (at the smallest normal float for ``eps = 0``), the weight ``(1 - p_t) ** gamma_t``."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if term.clip > 0:
        xs_neg = (xs_neg + term.clip).clamp(max=1)
    eps = term.eps if term.eps > 0 else torch.finfo(x.dtype).tiny
    loss = t * torch.log(xs_pos.clamp(min=eps)) + (1 - t) * torch.log(xs_neg.clamp(min=eps))
    if term.gamma > 0 or term.gamma_neg > 0:
        with torch.no_grad() if term.detach_weight else contextlib.nullcontext():
            p_t = xs_pos * t + xs_neg * (1 - t)
            weight = focal_weight(1 - p_t, term.gamma * t + term.gamma_neg * (1 - t))
        loss = loss * weight
    return -loss


def sigmoid_loss(input, target, score=None, *, term, weight, ignore_index, reduction, normalizer):
    """A one-vs-all sigmoid loss of ``(N, C, P)`` logits: ``term`` (a
    :class:`~triton_focal.sigmoid_term.SigmoidTerm`) per element, times ``weight``, reduced.

    ``target`` is a dense float ``(N, C, P)`` tensor or class indices ``(N, P)``; with class
    indices, ``score`` ``(N, P)`` (or None for 1) is the positive's target value. An element is
    positive where its class is the row's index, or, for dense targets, where ``t > 0``.
    """
    x = input.to(compute_dtype(input.dtype))
    if target.is_floating_point():
        t = target.to(x.dtype)
        positive = t > 0
        valid = None
    else:
        one_hot, valid = dense_targets(input, target, ignore_index)
        positive = one_hot > 0
        t = one_hot if score is None else one_hot * score.to(x.dtype).unsqueeze(1)
        x = ignored_to_zero(x, valid)

    if term.kind == "focal":
        loss = _focal_term(x, t, term)
    elif term.kind == "star":
        loss = F.softplus(-term.gamma * x * (2 * t - 1)) / term.gamma
        if term.alpha >= 0:
            loss = (term.alpha * t + (1 - term.alpha) * (1 - t)) * loss
    elif term.kind == "quality":
        loss = _quality_term(x, t, term)
    elif term.kind == "varifocal":
        loss = _varifocal_term(x, t, positive, term)
    else:
        loss = _asymmetric_term(x, t, term)
    if weight is not None:
        loss = loss * weight.to(x.dtype)

    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        count = valid.sum()
    else:
        count = torch.tensor(loss.numel(), device=x.device)
    if normalizer is not None and reduction != "none":
        return (loss.sum() / normalizer).to(input.dtype)
    return reduce_loss(loss, reduction, count.to(x.dtype)).to(input.dtype)


def sigmoid_focal_loss(input, target, *, alpha, gamma, weight, ignore_index, reduction, normalizer):
    """One-vs-all sigmoid focal loss of ``(N, C, P)`` logits (:func:`sigmoid_loss` of the focal term).

    ``target`` is a dense float ``(N, C, P)`` tensor or class indices ``(N, P)``.
    """
    term = SigmoidTerm("focal", alpha=alpha, gamma=gamma)
    return sigmoid_loss(
        input, target, term=term, weight=weight, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer
    )


def sigmoid_focal_loss_star(input, target, *, alpha, gamma, reduction):
    """FL* (RetinaNet appendix): ``alpha_t * softplus(-gamma * x * (2t - 1)) / gamma``."""
    term = SigmoidTerm("star", alpha=alpha, gamma=gamma)
    return sigmoid_loss(input, target, term=term, weight=None, ignore_index=-100, reduction=reduction, normalizer=None)


def distribution_bins(target, num_bins):
    """The two bins around each position and their weights, ``(left, right, w_left, w_right)``:
    ``left = min(floor(y), n - 2)``, ``right = left + 1``, ``w_left = right - y``, ``w_right =
    y - left``. At ``y = n - 1`` the right bin has the whole weight (``floor`` alone would point
    past the last bin); at any other integer ``y`` the left bin has it, as in mmdet."""
    left = torch.clamp(torch.floor(target), 0, num_bins - 2)
    return left.long(), left.long() + 1, left + 1 - target, target - left


def distribution_focal_loss(input, target, *, mask, weight, reduction, normalizer, return_expectation=False):
    """Distribution Focal Loss (GFL) of ``(R, n)`` bin logits against ``(R,)`` positions,
    written as mmdet's ``distribution_focal_loss`` writes it::

        loss = CE(x, left) * (right - y) + CE(x, right) * (y - left)

    with :func:`distribution_bins` choosing the bins. ``mask`` ``(R,)`` (True = counts, None =
    all): a masked row's logits and target are replaced by 0 before anything reads them, its
    loss and expectation are 0. ``weight`` ``(R // G, G)`` multiplies the loss. ``"mean"``
    divides by the number of unmasked rows (0 for none, with a zero gradient); a ``normalizer``
    divides the sum instead. A target outside ``[0, n - 1]`` (or NaN) on an unmasked row makes
    that row's loss, expectation and gradient NaN (validation refuses it where it can see it).

    Returns:
        The loss (``(R,)`` for ``"none"``, else 0-dim), and with ``return_expectation`` the
        ``(R,)`` expectation ``sum_j j softmax(x)_j`` too, in the input's dtype.
    """
    num_bins = input.shape[1]
    x = input.to(compute_dtype(input.dtype))
    valid = torch.ones_like(target, dtype=torch.bool) if mask is None else mask
    y = torch.where(valid, target.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
    x = ignored_to_zero(x, valid.unsqueeze(1))
    # An out-of-range position poisons its row (loss, gradient and expectation), where a
    # silently extrapolated loss would train on a wrong target.
    in_range = (y >= 0) & (y <= num_bins - 1)
    x = x + torch.where(in_range, 0.0, math.nan).unsqueeze(1)
    left, right, w_left, w_right = distribution_bins(torch.where(in_range, y, torch.zeros_like(y)), num_bins)

    # A bin of weight 0 adds 0, even where its logit is -inf (CE = inf there).
    zero = torch.zeros_like(y)
    ce_left = F.cross_entropy(x, left, reduction="none")
    ce_right = F.cross_entropy(x, right, reduction="none")
    loss = torch.where(w_left > 0, ce_left * w_left, zero) + torch.where(w_right > 0, ce_right * w_right, zero)
    if weight is not None:
        loss = loss * weight.reshape(-1).to(x.dtype)
    loss = torch.where(valid, loss, zero)
    if normalizer is not None and reduction != "none":
        loss = loss.sum() / normalizer
    else:
        loss = reduce_loss(loss, reduction, valid.sum(dtype=x.dtype))
    if not return_expectation:
        return loss.to(input.dtype)
    bins = torch.arange(num_bins, device=x.device, dtype=x.dtype)
    expectation = torch.where(valid, (F.softmax(x, dim=1) * bins).sum(dim=1), zero)
    return loss.to(input.dtype), expectation.to(input.dtype)
