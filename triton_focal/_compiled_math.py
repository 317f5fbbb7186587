"""The compile backend's math: each loss, and its closed-form gradient.

``reference.py`` states the losses for reading and lets autograd differentiate them; this
module states the same losses for speed. The softmax loss reduces the logits to a few
numbers per row (log-sum-exp, the target's log-probability, the gradient's coefficients) in
one loop over the classes, and writes the gradient from them in one elementwise pass; the
sigmoid loss computes its loss and gradient from the same per-element intermediates. Only
label smoothing needs a focal term for every class. Each ``*_forward_and_grad`` function is
one compiled function; the gradient it writes is the one for ``grad_output == 1``.

Every function takes ``(N, C, P)`` logits and returns float32 (float64 for float64 input)
results; the caller casts. The numbers a user varies between calls (gamma, alpha, eps, the
z-loss and softcap coefficients, ignore_index) arrive as 0-dim tensors, so a compiled
function is never specialized on their values. The structure of a call (reduction, which
optional terms are present) is the keyword-only ``cfg``, fixed per compiled function.

The softmax loss's row math (the focal term ``f``, its coefficient ``g``, a row's loss and
gradient, the numerics at ``p = 0`` and ``p -> 1``): see ``_row_math``.

The softmax loss's Poly-1 (``e_p`` its coefficient, ``q = 1 - p_y``), per-element weight ``v`` and divisor::

    loss  += e_p * w_y * q ** (gamma + 1)                        (after alpha, before v)
    d/dz_j [q ** (gamma + 1)] = (gamma + 1) * q ** gamma * p_y * (p_j - [j == y])
    loss_v = v * loss,  dloss_v/dz_j = v * dloss/dz_j

so Poly-1 adds ``e_p * w_y * (gamma + 1) * q ** gamma * p_y`` to the target's coefficient (the one
that multiplies ``p_j - [j == y]``; ``q ** gamma`` is finite for ``gamma >= 0``, no
``q ** (gamma - 1)``), and ``v`` scales a row's coefficients like the mean's ``1 / sum(v * w_y)``
does (the z-loss part's ``1 / sum(v)``). A ``normalizer`` replaces both divisors by itself.
"""

import torch

from ._row_math import focal_and_coef, mean_scale, power, safe_ratio
from .reference import compute_dtype

# --- shared pieces ---------------------------------------------------------------------------


def sigmoid_parts(x):
    """``sigmoid(x)``, ``sigmoid(-x)`` and ``log1p(exp(-|x|))`` from one ``exp``: both
    probabilities without cancellation, and the softplus remainder of the BCE."""
    e = torch.exp(-x.abs())
    inv = 1 / (1 + e)
    positive = x >= 0
    return torch.where(positive, inv, e * inv), torch.where(positive, e * inv, inv), torch.log1p(e)


def softcap_forward(x, softcap):
    """``softcap * tanh(x / softcap)``, Gemma 2's logit cap."""
    return softcap * torch.tanh(x / softcap)


def softcap_backward(grad_z, x, softcap):
    """The cap's chain rule: ``dz/dx = 1 - tanh(x / softcap) ** 2``."""
    t = torch.tanh(x / softcap)
    return grad_z * (1 - t * t)


def per_class(value):
    """A 0-dim value, or a ``(C,)`` tensor viewed along dimension 1 of ``(N, C, P)``."""
    return value if value.dim() == 0 else value.view(1, -1, 1)


def at_target(value, safe_target):
    """A 0-dim value, or a ``(C,)`` tensor read at each row's target class (``(N, P)``)."""
    return value if value.dim() == 0 else value[safe_target]


# --- softmax focal loss ----------------------------------------------------------------------


def target_logit(z, target, target_class, rows):
    """``z[n, target[n, p], p]`` per row, for targets already clamped into ``[0, C)`` (an index
    out of range is counted by :func:`_softmax_rows` and refused by the caller).

    Rows (``(N, C, 1)``) gather it: one load per row. Channels-first positions sum it out of
    the class loop that the log-sum-exp already runs (``where(c == y, z, 0)``, comparing
    floats: see :func:`softmax_forward_and_grad`): a gather there would read a cache line of
    another class plane for every pixel, and Inductor compiles it as scalar loads.
    """
    if rows:
        return z.gather(1, target.unsqueeze(1)).squeeze(1)
    classes = class_indices(z.shape[1], target_class)
    return torch.where(classes == target_class.unsqueeze(1), z, torch.zeros_like(z)).sum(dim=1)


def class_indices(num_classes, like):
    """``0, 1, ..., C - 1`` in ``like``'s dtype and device, viewed along dimension 1 of ``(N, C, P)``."""
    return torch.arange(num_classes, device=like.device, dtype=like.dtype).view(1, -1, 1)


def _softmax_rows(x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, cfg, poly=None, extra=None):
    """The loss of ``_row_math``'s docstring (with this module's options), reduced, and what its
    gradient needs per row.

    Everything the gradient needs per row is computed once per row, so that the gradient's
    pass over the logits does only per-element work (Inductor would otherwise recompute a
    per-row gather and power for every class of the row).

    Returns ``(loss, out_of_range, z, target_class, lse, target_coef, p_coef, smooth_coef)``:
    the reduced loss in ``x``'s dtype; the number of targets that are neither
    ``ignore_index`` nor in ``[0, C)`` (the loss is meaningless unless it is 0); the
    computation dtype's (softcapped) logits; and per row (``(N, P)``; the coefficients are 0
    on ignored rows and include the mean's division): the target class as a float, -1 on
    ignored rows, ``lse(z)``, ``target_coef``, which multiplies ``-[j == y]``,
    ``p_coef``, which multiplies ``p_j``, and ``smooth_coef``, which multiplies
    ``-w_j * g_j`` (label smoothing only, else None).

    ``poly`` is Poly-1's coefficient (``cfg.poly``), ``extra`` the pair ``(element_weight,
    normalizer)``: an ``(N, P)`` weight (``cfg.element_weight``) and a 0-dim divisor
    (``cfg.normalizer``, with the reduction "sum"), each None where off.
    """
    element_weight, normalizer = extra if extra is not None else (None, None)
    z = x.to(compute_dtype(x.dtype))
    if cfg.softcap:
        z = softcap_forward(z, softcap)
    num_classes = z.shape[1]
    valid = target != ignore_index
    out_of_range = (valid & ((target < 0) | (target >= num_classes))).sum()
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long().clamp(0, max(num_classes - 1, 0))
    zero_row = torch.zeros(safe_target.shape, dtype=z.dtype, device=z.device)
    # The target as a float, -1 on ignored rows: what the per-element passes compare with.
    index_dtype = torch.float32 if num_classes <= 2**24 else torch.float64  # exact class indices
    target_class = torch.where(valid, safe_target, -1).to(index_dtype)

    lse = torch.logsumexp(z, dim=1)
    log_p_target = target_logit(z, safe_target, target_class, cfg.rows) - lse
    focal_target, coef_target = focal_and_coef(log_p_target, at_target(gamma, safe_target))
    w_target = at_target(weight, safe_target) if cfg.weight else torch.ones_like(lse)
    a_target = at_target(alpha, safe_target) if cfg.alpha else 1.0

    # Each element's weight, read on non-ignored rows only (NaN elsewhere reaches nothing).
    v = torch.where(valid, element_weight.to(z.dtype), zero_row) if cfg.element_weight else None
    # The scale of each row's focal part and z-loss part in the reduced loss.
    if cfg.reduction == "mean":
        weighted = w_target if v is None else v * w_target
        focal_scale = mean_scale(torch.where(valid, weighted, zero_row).sum())
        z_scale = mean_scale(valid.sum().to(z.dtype) if v is None else v.sum())
    elif cfg.normalizer:
        focal_scale = z_scale = 1 / normalizer
    else:
        focal_scale = z_scale = 1.0
    if v is not None:
        focal_scale = focal_scale * v  # per row from here on
        z_scale = z_scale * v
    row_scale = torch.where(valid, a_target * focal_scale + zero_row, zero_row)

    loss = w_target * focal_target
    target_coef = row_scale * w_target * coef_target
    poly_loss = None
    if cfg.poly:
        # e_p * w_y * q ** (g + 1), q from expm1 as the focal term's; its coefficient joins the
        # target's (outside alpha and smoothing).
        gamma_y = at_target(gamma, safe_target)
        q = -torch.expm1(log_p_target)
        q_pow = power(q, gamma_y)
        poly_loss = poly * w_target * q_pow * q
        poly_coef = poly * w_target * (gamma_y + 1) * q_pow * torch.exp(log_p_target)
        poly_coef = torch.where(valid, focal_scale * poly_coef + zero_row, zero_row)
    smooth_coef = None
    if cfg.smoothing:
        w = per_class(weight) if cfg.weight else 1.0
        log_p = z - lse.unsqueeze(1)
        focal, coef = focal_and_coef(log_p, per_class(gamma))
        masked = torch.isneginf(z)
        zero = torch.zeros_like(focal)
        smooth = (w * torch.where(masked, zero, focal)).sum(dim=1)
        coef_sum = (w * torch.where(masked, zero, coef)).sum(dim=1)
        loss = (1 - eps) * loss + (eps / num_classes) * smooth
        target_coef = (1 - eps) * target_coef
        if cfg.poly:
            target_coef = target_coef + poly_coef
        smooth_coef = row_scale * (eps / num_classes)
        p_coef = target_coef + smooth_coef * coef_sum
    else:
        if cfg.poly:
            target_coef = target_coef + poly_coef
        p_coef = target_coef
    loss = a_target * loss if poly_loss is None else a_target * loss + poly_loss
    loss = torch.where(valid, loss, zero_row)
    if cfg.z_loss:
        z_part = torch.where(valid, z_loss * lse * lse, zero_row)
        p_coef = p_coef + torch.where(valid, z_scale * 2 * z_loss * lse, zero_row)

    if cfg.reduction == "none":
        total = loss + z_part if cfg.z_loss else loss
        if v is not None:
            total = v * total
    elif v is not None:  # the scales hold v, per row
        total = (loss * focal_scale).sum()
        if cfg.z_loss:
            total = total + (z_part * z_scale).sum()
    else:
        total = loss.sum() * focal_scale
        if cfg.z_loss:
            total = total + z_part.sum() * z_scale
    return total.to(x.dtype), out_of_range, z, target_class, lse, target_coef, p_coef, smooth_coef


def softmax_forward(x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, *options, cfg):
    """The reduced loss and the number of out-of-range targets (see :func:`_softmax_rows`),
    and the per-row float target, returned for the reason :func:`softmax_forward_and_grad`
    gives. ``options``: ``(poly, element_weight, normalizer)`` where any is on (else none)."""
    poly, extra = _softmax_options(options)
    loss, out_of_range, _, target_class, *_ = _softmax_rows(
        x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, cfg, poly, extra
    )
    return loss, out_of_range, target_class


def _softmax_options(options):
    """``(poly, (element_weight, normalizer))`` from the trailing arguments, None where absent."""
    if not options:
        return None, None
    poly, element_weight, normalizer = options
    return poly, (element_weight, normalizer)


def softmax_forward_and_grad(
    x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, grad_out, *options, cfg
):
    """The reduced loss and the number of out-of-range targets, and the gradient for
    ``grad_output == 1`` written into ``grad_out`` (``x``'s shape and dtype), from one
    compiled function: Inductor writes the gradient in a pass right after the per-row one,
    so the backward only scales it.

    The target term ``-[j == y] * target_coef`` is selected by comparing the class index
    with each row's target as a float, -1 on ignored rows (a compare of four bytes:
    Inductor's vectorized int64 compare cost a third of the pass on a CPU). That per-row
    float is returned too, unused, because Inductor computes a graph output once per row;
    an intermediate it would recompute from the int64 target for every class. ``options``
    as in :func:`softmax_forward`."""
    poly, extra = _softmax_options(options)
    loss, out_of_range, z, target_class, lse, target_coef, p_coef, smooth_coef = _softmax_rows(
        x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, cfg, poly, extra
    )
    log_p = z - lse.unsqueeze(1)
    zero = torch.zeros_like(log_p)
    p_part = p_coef.unsqueeze(1) * torch.exp(log_p)
    row_class = target_class.unsqueeze(1)
    grad = torch.where(class_indices(z.shape[1], target_class) == row_class, p_part - target_coef.unsqueeze(1), p_part)
    if cfg.smoothing:
        _, coef = focal_and_coef(log_p, per_class(gamma))
        w = per_class(weight) if cfg.weight else 1.0
        grad = grad - torch.where(torch.isneginf(z), zero, smooth_coef.unsqueeze(1) * w * coef)
    grad = torch.where(row_class >= 0, grad, zero)  # NaN or inf on ignored rows never leaks
    if cfg.softcap:
        grad = softcap_backward(grad, x.to(z.dtype), softcap)
    grad_out.copy_(grad)
    return loss, out_of_range, target_class


# --- sigmoid focal loss ----------------------------------------------------------------------


def _sigmoid_terms(x, target, score, ignore_index, cfg):
    """Per element: the computation dtype's logits, the target ``t``, which elements are
    positive, and the row mask (or None); for class-index targets also the per-row class as a
    float (``-inf`` on ignored rows).

    The per-element passes compare the class index with that per-row float, not with the
    int64 target: Inductor's vectorized int64 compare (and the ignore test redone for every
    class) made class-index targets slower than dense ones, which read 4 bytes more per
    element. ``-inf`` is no class and no integer, so no target value can collide with it.
    """
    x = x.to(compute_dtype(x.dtype))
    if cfg.index_targets:
        num_classes = x.shape[1]
        index_dtype = torch.float32 if num_classes < 2**24 else torch.float64  # exact class indices
        row_class = torch.where(target != ignore_index, target.to(index_dtype), float("-inf"))
        column = row_class.unsqueeze(1)
        positive = column == class_indices(num_classes, row_class)
        t = positive.to(x.dtype)
        if score is not None:
            t = t * score.to(x.dtype).unsqueeze(1)
        valid = column != float("-inf")
        return x, t, positive, valid, row_class
    t = target.to(x.dtype)
    return x, t, t > 0, None, None


def bce_with_logits(x, t, softplus_rest):
    """``BCE(x, t) = t * relu(-x) + (1 - t) * relu(x) + log1p(exp(-|x|))`` (``max(x, 0) - x t +
    ...`` rearranged for ``t`` in ``[0, 1]``), where a factor ``t`` or ``1 - t`` that is 0
    gives 0 even at an infinite logit: a ``+inf`` logit with target 1 (``-inf`` with 0) has
    BCE 0, not ``inf - inf``."""
    zero = torch.zeros_like(x)
    positive_part = torch.where(t < 1, (1 - t) * torch.clamp_min(x, 0), zero)
    negative_part = torch.where(t > 0, t * torch.clamp_min(-x, 0), zero)
    return positive_part + negative_part + softplus_rest


def _power_and_ratio(base, exponent):
    """``base ** exponent`` and ``base ** (exponent - 1)`` for ``base`` in ``[0, 1]``, the base
    clamped to the smallest normal float (``0 ** 0 == 1``, both finite for every exponent)."""
    safe = torch.clamp_min(base, torch.finfo(base.dtype).tiny)
    value = power(safe, exponent)
    return value, value / safe


# Each term below is ``(f, df/dx)`` per element, the closed form of ``sigmoid_term.py``'s formula
# that ``kernels/sigmoid_terms.py`` computes too; ``s - t`` is ``s (1 - t) - s_neg t``, exact for
# hard targets.


def sigmoid_focal_term(x, t, p, one_minus_p, bce, numbers, cfg):
    """``alpha_t (1 - p_t) ** g * bce`` (+ Poly-1's ``eps (1 - p_t) ** (g + 1)``)::

    d/dx [(1 - p_t) ** g * bce] = g * (1 - p_t) ** g * (p (1 - p) / (1 - p_t)) * (1 - 2t) * bce
                                  + (1 - p_t) ** g * (p - t)

    ``p (1 - p) / (1 - p_t)`` is finite (``p`` or ``1 - p`` for hard targets) and taken as 0
    where ``1 - p_t`` underflows to 0, where both terms vanish.
    """
    g = per_class(numbers["gamma"])
    one_minus_p_t = one_minus_p * t + p * (1 - t)  # no cancellation
    focal = power(one_minus_p_t, g)
    ratio = safe_ratio(p * one_minus_p, one_minus_p_t, torch.zeros_like(p))
    d_one_minus_p_t = ratio * (1 - 2 * t)  # d(1 - p_t)/dx over (1 - p_t)
    loss, grad = focal * bce, focal * (g * d_one_minus_p_t * bce + (p - t))
    if cfg.alpha:
        alpha = numbers["alpha"]
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss, grad = alpha_t * loss, alpha_t * grad
    if cfg.poly:
        eps = numbers["poly_epsilon"]
        loss = loss + eps * focal * one_minus_p_t
        grad = grad + eps * (g + 1) * focal * (p * one_minus_p) * (1 - 2 * t)
    return loss, grad


def quality_term(x, t, p, one_minus_p, bce, numbers, cfg):
    """QFL: ``bce * |d| ** beta``, ``d = s - t``; ``d/dx |d| ** beta = beta |d| ** (beta - 1) sign(d) s (1 - s)``."""
    beta = numbers["gamma"]
    d = p * (1 - t) - one_minus_p * t
    mod, mod_m1 = _power_and_ratio(d.abs(), beta)
    sign = torch.where(d < 0, -1.0, 1.0)
    return mod * bce, mod * d + beta * mod_m1 * sign * (p * one_minus_p) * bce


def varifocal_term(x, t, positive, p, one_minus_p, softplus_rest, bce, numbers, cfg):
    """VFL: ``bce * w``, ``w = t`` (or 1) on positives, ``alpha s ** gamma`` elsewhere, with
    ``d/dx (alpha s ** gamma) = alpha gamma s ** gamma (1 - s)`` (dropped with ``detach_weight``)."""
    gamma = numbers["gamma"]
    log_s = -(torch.clamp_min(-x, 0) + softplus_rest)  # -softplus(-x): exact where s underflows
    negative_weight = numbers["alpha"] * torch.where(gamma == 0, torch.ones_like(x), torch.exp(gamma * log_s))
    w = torch.where(positive, t if cfg.iou_weighted else torch.ones_like(t), negative_weight)
    grad = w * (p * (1 - t) - one_minus_p * t)
    if not cfg.detach_weight:
        grad = grad + torch.where(positive, torch.zeros_like(x), gamma * negative_weight * one_minus_p) * bce
    return w * bce, grad


def asymmetric_term(x, t, p, one_minus_p, softplus_rest, numbers, cfg):
    """ASL: ``-(t L+ + (1 - t) L-) * (1 - p_t) ** gamma_t`` (see ``kernels/sigmoid_terms.py``:
    the same logs, shift and clamps, and their derivatives)."""
    ds = p * one_minus_p
    log_s = -(torch.clamp_min(-x, 0) + softplus_rest)
    zero = torch.zeros_like(x)
    if cfg.clip:
        clip = numbers["clip"]
        shifted = p > clip
        s_m = torch.where(shifted, p - clip, zero)
        log_neg = torch.log1p(-s_m)
        d_s_m = torch.where(shifted, ds, zero)
        d_log_neg = -d_s_m / torch.where(shifted, one_minus_p + clip, torch.ones_like(x))
    else:
        s_m, d_s_m = p, ds
        log_neg = -(torch.clamp_min(x, 0) + softplus_rest)
        d_log_neg = -p
    d_log_s = one_minus_p
    if cfg.eps:
        log_eps = numbers["log_eps"]
        d_log_s = torch.where(log_s > log_eps, d_log_s, zero)
        d_log_neg = torch.where(log_neg > log_eps, d_log_neg, zero)
        log_s = torch.maximum(log_s, log_eps)
        log_neg = torch.maximum(log_neg, log_eps)
    base = -(t * log_s + (1 - t) * log_neg)
    d_base = -(t * d_log_s + (1 - t) * d_log_neg)
    exponent = numbers["gamma"] * t + numbers["gamma_neg"] * (1 - t)
    mod, mod_m1 = _power_and_ratio(t * one_minus_p + (1 - t) * s_m, exponent)
    grad = mod * d_base
    if not cfg.detach_weight:
        grad = grad + exponent * mod_m1 * (-t * ds + (1 - t) * d_s_m) * base
    return mod * base, grad


def _sigmoid_loss_and_grad(x, target, score, weight, ignore_index, numbers, cfg, with_grad):
    """Per element, from one set of intermediates: the term's loss and (``with_grad``) its
    derivative, times ``weight``. Returns ``(loss, grad, valid, row_class)``, 0 on ignored
    rows; ``valid`` and ``row_class`` are None for dense targets."""
    x, t, positive, valid, row_class = _sigmoid_terms(x, target, score, ignore_index, cfg)
    p, one_minus_p, softplus_rest = sigmoid_parts(x)
    bce = bce_with_logits(x, t, softplus_rest)
    if cfg.term == "focal":
        loss, grad = sigmoid_focal_term(x, t, p, one_minus_p, bce, numbers, cfg)
    elif cfg.term == "quality":
        loss, grad = quality_term(x, t, p, one_minus_p, bce, numbers, cfg)
    elif cfg.term == "varifocal":
        loss, grad = varifocal_term(x, t, positive, p, one_minus_p, softplus_rest, bce, numbers, cfg)
    else:
        loss, grad = asymmetric_term(x, t, p, one_minus_p, softplus_rest, numbers, cfg)
    if weight is not None:
        loss, grad = loss * weight.to(x.dtype), grad * weight.to(x.dtype)
    if valid is not None:
        zero = torch.zeros_like(loss)
        loss = torch.where(valid, loss, zero)
        grad = torch.where(valid, grad, zero)
    return loss, (grad if with_grad else None), valid, row_class


def _element_scale(t, alpha, weight, cfg):
    """``alpha_t * weight`` per element (1 where neither is given)."""
    scale = alpha * t + (1 - alpha) * (1 - t) if cfg.alpha else torch.ones_like(t)
    if weight is not None:
        scale = scale * weight.to(t.dtype)
    return scale


def accurate_sum(loss):
    """The sum of every element, accurate to about 1e-7 relative in float32 as well: per-row
    sums over the classes (tens of terms each), then their sum in float64. One float32 sum
    over millions of terms (100000 anchors x 80 classes) was off by 1.5e-4. MPS has no
    float64: there the partials are summed in float32 (still a sum of row sums)."""
    rows = loss.sum(dim=1)
    if loss.dtype == torch.float32 and loss.device.type != "mps":
        return rows.to(torch.float64).sum()
    return rows.sum()


def _sigmoid_reduce(loss, valid, cfg):
    """The reduced loss and the factor its reduction applies to each element (None for "none")."""
    if cfg.reduction == "none":
        return loss, None
    total = accurate_sum(loss)
    if cfg.reduction == "sum":
        return total, None
    if valid is not None:  # (N, 1, P) rows: C elements each
        count = valid.sum().to(loss.dtype) * loss.shape[1]
    else:
        count = loss.new_tensor(loss.numel())
    scale = mean_scale(count)
    return total * scale, scale


def sigmoid_forward(x, target, score, weight, ignore_index, numbers, *, cfg):
    """``alpha_t * (1 - p_t) ** gamma * BCE(x, t) * weight``, reduced (``"mean"`` over the
    elements not ignored; a normalizer is applied by the caller to the ``"sum"``), and the
    per-row float class (None for dense targets), returned for the reason
    :func:`softmax_forward_and_grad` gives: so that Inductor computes it once per row."""
    loss, _, valid, row_class = _sigmoid_loss_and_grad(
        x, target, score, weight, ignore_index, numbers, cfg, with_grad=False
    )
    return _sigmoid_reduce(loss, valid, cfg)[0].to(x.dtype), row_class


def sigmoid_forward_and_grad(x, target, score, weight, ignore_index, numbers, grad_out, *, cfg):
    """The reduced loss, and its gradient for ``grad_output == 1`` written into ``grad_out``
    (``x``'s shape and dtype), in one elementwise pass; and the per-row float class as in
    :func:`sigmoid_forward`.

    The sigmoid loss is all transcendental functions and no reduction across classes, so
    its gradient costs little more than the loss when both share their intermediates; the
    backward only multiplies it by ``grad_output``.
    """
    loss, grad, valid, row_class = _sigmoid_loss_and_grad(
        x, target, score, weight, ignore_index, numbers, cfg, with_grad=True
    )
    loss, scale = _sigmoid_reduce(loss, valid, cfg)
    if scale is not None:
        grad = grad * scale
    grad_out.copy_(grad)
    return loss.to(x.dtype), row_class


# --- FL* -------------------------------------------------------------------------------------


def star_forward(x, target, gamma, alpha, *, cfg):
    """FL*: ``alpha_t * softplus(-gamma * x * (2t - 1)) / gamma``, reduced."""
    x_dtype = x.dtype
    x = x.to(compute_dtype(x.dtype))
    t = target.to(x.dtype)
    u = -gamma * x * (2 * t - 1)
    loss = _element_scale(t, alpha, None, cfg) * (torch.clamp_min(u, 0) + torch.log1p(torch.exp(-u.abs()))) / gamma
    if cfg.reduction == "sum":
        loss = loss.sum()
    elif cfg.reduction == "mean":
        loss = loss.sum() * mean_scale(loss.new_tensor(loss.numel()))
    return loss.to(x_dtype)


def star_backward(grad_loss, x, target, gamma, alpha, *, cfg):
    """``d FL*/dx = -alpha_t * (2t - 1) * sigmoid(-gamma * x * (2t - 1))``."""
    x_dtype = x.dtype
    x = x.to(compute_dtype(x.dtype))
    t = target.to(x.dtype)
    sign = 2 * t - 1
    grad = -_element_scale(t, alpha, None, cfg) * sign * torch.sigmoid(-gamma * x * sign)
    grad_loss = grad_loss.to(x.dtype)
    if cfg.reduction == "mean":
        grad_loss = grad_loss * mean_scale(x.new_tensor(x.numel()))
    return (grad * grad_loss).to(x_dtype)


# --- distribution focal loss -----------------------------------------------------------------
# Rows of n bin logits x against a position y in [0, n - 1], left = min(floor(y), n - 2),
# right = left + 1, w_l = right - y, w_r = y - left, m the row max, s = sum_j exp(x_j - m):
#
#     loss = lse - w_l x_l - w_r x_r = w_l (m - x_l + log s) + w_r (m - x_r + log s)
#     dloss/dx_j = p_j - w_l [j == left] - w_r [j == right]         (softmax minus the two-hot)
#     E = sum_j j p_j,  dE/dx_j = p_j (j - E)
#
# A bin of weight 0 adds 0 even at a -inf logit; a masked row is replaced by zeros before
# anything reads it; a position outside [0, n - 1] (or NaN) on a kept row makes the row NaN.


def _dfl_rows(x, target, mask, weight, cfg):
    """Per row, from one softmax: ``(loss, e, s, two_hot, keep, fill)`` with ``e = exp(x - m)``,
    ``s`` its row sum and ``two_hot`` the ``(R, n)`` target weights; the loss is weighted and 0
    (or NaN, ``fill``) where the row does not count."""
    x = x.to(compute_dtype(x.dtype))
    num_bins = x.shape[1]
    y = target.to(x.dtype)
    zero = torch.zeros_like(y)
    if cfg.mask:
        y = torch.where(mask, y, zero)
        x = torch.where(mask.unsqueeze(1), x, torch.zeros_like(x))
    in_range = (y >= 0) & (y <= num_bins - 1)
    keep = in_range & mask if cfg.mask else in_range
    fill = torch.where(in_range, zero, torch.full_like(y, float("nan")))
    if cfg.mask:
        fill = torch.where(mask, fill, zero)
    y = torch.where(in_range, y, zero)
    left = torch.clamp(torch.floor(y), max=num_bins - 2)
    w_left, w_right = left + 1 - y, y - left
    bins = class_indices(num_bins, x).view(1, -1)
    is_left = bins == left.unsqueeze(1)
    is_right = bins == (left + 1).unsqueeze(1)
    two_hot = torch.where(is_left, w_left.unsqueeze(1), torch.where(is_right, w_right.unsqueeze(1), 0.0))

    m = x.amax(dim=1, keepdim=True)
    e = torch.exp(x - m)
    s = e.sum(dim=1)
    log_s = torch.log(s)
    x_left = torch.where(is_left, x, torch.zeros_like(x)).sum(dim=1)
    x_right = torch.where(is_right, x, torch.zeros_like(x)).sum(dim=1)
    m = m.squeeze(1)
    loss = torch.where(w_left > 0, w_left * (m - x_left + log_s), zero)
    loss = loss + torch.where(w_right > 0, w_right * (m - x_right + log_s), zero)
    if cfg.weight:
        loss = loss * weight.reshape(-1).to(x.dtype)
    return torch.where(keep, loss, fill), e, s, two_hot, keep, fill


def _dfl_reduce(loss, mask, cfg):
    """The reduced loss and the factor its reduction applies to each row (None for "none")."""
    if cfg.reduction == "none":
        return loss, None
    total = loss.to(torch.float64).sum() if loss.dtype == torch.float32 and loss.device.type != "mps" else loss.sum()
    total = total.to(loss.dtype)
    if cfg.reduction == "sum":
        return total, None
    count = mask.sum().to(loss.dtype) if cfg.mask else loss.new_tensor(loss.numel())
    scale = mean_scale(count)
    return total * scale, scale


def _dfl_expectation(e, s, keep, fill):
    bins = class_indices(e.shape[1], e).view(1, -1)
    return torch.where(keep, (e * bins).sum(dim=1) / s, fill)


def _dfl_grad(e, s, two_hot, keep, fill, weight, row_scale, cfg):
    """``(p - two_hot) * row_scale`` per row (times the weight), NaN or 0 where the row does not count."""
    if cfg.weight:
        row_scale = row_scale * weight.reshape(-1).to(e.dtype)
    # row_scale: 0-dim (a reduced loss's factor), or one per row ("none", grad_output per row)
    grad = (e / s.unsqueeze(1) - two_hot) * (row_scale.unsqueeze(-1) if row_scale.dim() else row_scale)
    return torch.where(keep.unsqueeze(1), grad, fill.unsqueeze(1))


def dfl_forward(x, target, mask, weight, *, cfg):
    """The reduced loss (``"mean"`` over the unmasked rows; a normalizer is applied by the caller
    to the ``"sum"``) and the ``(R,)`` expectation where ``cfg.expectation`` (else None)."""
    loss, e, s, _, keep, fill = _dfl_rows(x, target, mask, weight, cfg)
    expectation = _dfl_expectation(e, s, keep, fill).to(x.dtype) if cfg.expectation else None
    return _dfl_reduce(loss, mask, cfg)[0].to(x.dtype), expectation


def dfl_forward_and_grad(x, target, mask, weight, grad_out, *, cfg):
    """:func:`dfl_forward`'s loss, and its gradient for ``grad_output == 1`` written into
    ``grad_out`` (``x``'s shape and dtype), from the same softmax."""
    loss, e, s, two_hot, keep, fill = _dfl_rows(x, target, mask, weight, cfg)
    loss, scale = _dfl_reduce(loss, mask, cfg)
    row_scale = scale if scale is not None else torch.ones((), dtype=e.dtype, device=e.device)
    grad_out.copy_(_dfl_grad(e, s, two_hot, keep, fill, weight, row_scale, cfg))
    return loss.to(x.dtype), None


def dfl_backward(grad_loss, grad_expectation, x, target, mask, weight, *, cfg):
    """The gradient against both cotangents: ``grad_loss`` (0-dim, or ``(R,)`` for ``"none"``)
    times the loss's, plus ``grad_expectation`` ``(R,)`` times ``p_j (j - E)``."""
    loss, e, s, two_hot, keep, fill = _dfl_rows(x, target, mask, weight, cfg)
    _, scale = _dfl_reduce(loss, mask, cfg)
    row_scale = grad_loss.to(e.dtype) if scale is None else grad_loss.to(e.dtype) * scale
    grad = _dfl_grad(e, s, two_hot, keep, fill, weight, row_scale, cfg)
    p = e / s.unsqueeze(1)
    expectation = _dfl_expectation(e, s, keep, fill)
    bins = class_indices(e.shape[1], e).view(1, -1)
    grad = grad + torch.where(
        keep.unsqueeze(1), grad_expectation.to(e.dtype).unsqueeze(1) * p * (bins - expectation.unsqueeze(1)), 0.0
    )
    return grad.to(x.dtype)
