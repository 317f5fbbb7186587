"""What a one-vs-all sigmoid loss computes per element: its kind and its numbers, in one object.

Every sigmoid loss of the package is, per element ``(n, c, p)`` with logit ``x``, target
``t`` in ``[0, 1]`` and ``s = sigmoid(x)``, one *term* ``f(x, t)`` times an optional
``weight``; ignored rows, class-index targets, reductions and the normalizer are shared by
all of them. The terms, as their sources write them (the README's table says where each
comes from):

================  ===========================================================================
``focal``         ``alpha_t * (1 - p_t) ** gamma * BCE(x, t) + poly_epsilon * (1 - p_t) ** (gamma + 1)``
``star``          FL*: ``alpha_t * softplus(-gamma * x * (2t - 1)) / gamma``
``quality``       QFL: ``BCE(x, t) * |t - s| ** beta`` (``beta`` travels as ``gamma``)
``varifocal``     VFL: ``BCE(x, t) * w``, ``w = t`` (1 without ``iou_weighted``) on positives,
                  ``alpha * s ** gamma`` elsewhere
``asymmetric``    ASL: ``-(t log s_eps + (1 - t) log(1 - s_m)_eps) * (1 - p_t) ** gamma_t`` with
                  the shifted ``s_m = max(s - clip, 0)``, ``gamma_t = gamma t + gamma_neg (1 - t)``
                  (``gamma`` is ``gamma_pos``), logs clamped at ``log(eps)``
================  ===========================================================================

``detach_weight`` drops the gradient through the modulating weight (VFL's ``w``, ASL's
``(1 - p_t) ** gamma_t``), as RT-DETR and ASL's ``disable_torch_grad_focal_loss`` do.

The object is frozen and hashable, so the compile backend keys its compiled functions on the
structural part (:meth:`structure`) and passes the numbers as tensors; the Triton ops take it
as :meth:`encode`'s list of floats (``torch.library`` schemas have no dataclasses).
"""

import dataclasses
import math

KINDS = ("focal", "star", "quality", "varifocal", "asymmetric")


@dataclasses.dataclass(frozen=True)
class SigmoidTerm:
    kind: str = "focal"
    alpha: float = -1.0  # focal/star: alpha_t's alpha, negative for none; varifocal: alpha
    gamma: float = 2.0  # focal/star/varifocal gamma, quality beta, asymmetric gamma_pos
    gamma_neg: float = 0.0  # asymmetric
    clip: float = 0.0  # asymmetric probability shift
    eps: float = 0.0  # asymmetric log clamp
    poly_epsilon: float = 0.0  # focal: Poly-1's coefficient
    iou_weighted: bool = True  # varifocal
    detach_weight: bool = False  # varifocal, asymmetric

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sigmoid term {self.kind!r}; one of {KINDS}")

    @property
    def has_alpha(self):
        """Whether ``alpha_t`` multiplies the focal or FL* term."""
        return self.kind in ("focal", "star") and self.alpha >= 0

    @property
    def log_eps(self):
        """``log(eps)``, the asymmetric term's clamp in log space (``-inf``: no clamp)."""
        return math.log(self.eps) if self.eps > 0 else -math.inf

    def structure(self):
        """What changes the code, not the numbers: the kind and the flags that select terms."""
        return (
            self.kind,
            self.has_alpha,
            self.poly_epsilon != 0,
            self.iou_weighted,
            self.detach_weight,
            self.clip > 0,
            self.eps > 0,
        )

    def encode(self):
        """The term as a list of floats, for a ``torch.library`` op (:meth:`decode` inverts it)."""
        return [
            float(KINDS.index(self.kind)),
            self.alpha,
            self.gamma,
            self.gamma_neg,
            self.clip,
            self.eps,
            self.poly_epsilon,
            float(self.iou_weighted),
            float(self.detach_weight),
        ]

    @staticmethod
    def decode(values):
        kind, alpha, gamma, gamma_neg, clip, eps, poly, iou_weighted, detach = values
        return SigmoidTerm(KINDS[int(kind)], alpha, gamma, gamma_neg, clip, eps, poly, bool(iou_weighted), bool(detach))
