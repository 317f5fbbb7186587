"""The implementations measured side by side, each behind the same ``(x, target) -> loss``.

Softmax families (seg, vocab) compute ``focal_loss(gamma=2, reduction="mean")`` with
``ignore_index``; the detection family computes ``sigmoid_focal_loss(alpha=0.25, gamma=2,
reduction="sum")``; the focal family computes QFL, VFL and ASL with their sources' defaults,
summed, against each source's own composition ("source", eager and compiled). Other libraries
are called with their own arguments and converted to these reductions with scalar operations
(README: the conventions table). ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``
are the gamma = 0 baselines: what the same bytes cost without the focal term. Liger's cross
entropy is plain CE too and is labelled so.
"""

import importlib
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .cases import DET_ALPHA, FAMILY_LOSSES, GAMMA, IGNORE_INDEX

SIGMOID_FAMILY = tuple(loss for loss in FAMILY_LOSSES if loss != "distribution")


@dataclass
class Provider:
    """One implementation.

    Attributes:
        name: short key used on the command line and in the JSON.
        label: legend text.
        losses: which loss kinds it computes ("softmax", "sigmoid").
        build: ``build(case) -> fn(x, target) -> 0-dim loss``.
        focal: True if it computes the focal loss (its value is checked against the
            reference); False for the plain CE / BCE floors.
        families: restrict to these families (None: every family of its loss kinds).
    """

    name: str
    label: str
    losses: tuple
    build: object
    focal: bool = True
    families: tuple = None
    notes: list = field(default_factory=list)

    def applies(self, case):
        if case.loss not in self.losses:
            return False
        return self.families is None or case.family in self.families


# --- triton_focal's backends through the public API ----------------------------------------


def _triton_focal_builder(backend):
    def build(case):
        import triton_focal

        if case.loss in ("quality", "varifocal"):
            fn = triton_focal.quality_focal_loss if case.loss == "quality" else triton_focal.varifocal_loss
            return lambda x, t: fn(x, *t, reduction="sum", backend=backend)
        if case.loss == "asymmetric":
            return lambda x, t: triton_focal.asymmetric_loss(x, t, backend=backend)
        if case.loss == "distribution":
            return lambda x, t: triton_focal.distribution_focal_loss(
                x, t[0], mask=t[1], reduction="sum", backend=backend
            )
        if case.loss == "softmax":
            return lambda x, t: triton_focal.focal_loss(
                x, t, gamma=GAMMA, ignore_index=IGNORE_INDEX, reduction="mean", backend=backend
            )
        return lambda x, t: triton_focal.sigmoid_focal_loss(
            x, t, alpha=DET_ALPHA, gamma=GAMMA, reduction="sum", backend=backend
        )

    return build


# --- the compositions people write ---------------------------------------------------------


def _blog_softmax_focal(x, t):
    # The focal loss of blog posts and many repositories: cross entropy per element, then
    # p_t = exp(-ce) and the (1 - p_t) ** gamma factor, in the logits' dtype.
    ce = F.cross_entropy(x, t, reduction="none", ignore_index=IGNORE_INDEX)
    p_t = torch.exp(-ce)
    loss = (1 - p_t) ** GAMMA * ce
    return loss.sum() / (t != IGNORE_INDEX).sum()


def _build_blog(case):
    return _blog_softmax_focal


def _compiled(fn):
    """``torch.compile(fn)`` as a user would write it (default options), one per case."""
    return torch.compile(fn)


def _dense(x, t):
    # Class indices (target == C: background) to the one-hot a dense-target API needs; with a
    # score per row, the one-hot times the score (the dense soft target of QFL and VFL).
    if isinstance(t, tuple):
        label, score = t
        return _dense(x, label) * score.to(x.dtype).unsqueeze(1)
    if t.is_floating_point():
        return t
    return F.one_hot(t, x.shape[1] + 1)[:, : x.shape[1]].to(x.dtype)


# --- the focal family as its sources write it ----------------------------------------------


def _mmdet_quality_focal_loss(pred, target, beta=2.0):
    # mmdetection mmdet/models/losses/gfocal_loss.py quality_focal_loss, (label, score) targets;
    # the scores in the logits' dtype, as a half-precision pipeline hands them over (with
    # float32 scores its indexed assignment fails in bf16: the float32 product into a bf16 loss).
    label, score = target
    score = score.to(pred.dtype)
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale_factor.abs().pow(beta)
    return loss.sum(dim=1).sum()


def _ultralytics_varifocal_loss(pred_score, target, alpha=0.75, gamma=2.0):
    # ultralytics/utils/loss.py VarifocalLoss.forward (its autocast-off float32 BCE), summed
    # instead of .mean(1).sum(): this suite's reduction. It takes the one-hot label and the
    # dense score, built here from the class indices as its assigner does.
    label = _dense(pred_score, target[0])
    gt_score = _dense(pred_score, target)
    weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
    return (F.binary_cross_entropy_with_logits(pred_score.float(), gt_score.float(), reduction="none") * weight).sum()


def _asymmetric_loss(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    # Alibaba-MIIL ASL src/loss_functions/losses.py AsymmetricLoss.forward.
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt0 = xs_pos * y
        pt1 = xs_neg * (1 - y)
        pt = pt0 + pt1
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss *= one_sided_w
    return -loss.sum()


def _ultralytics_distribution_focal_loss(pred_dist, target, reg_max=16):
    # ultralytics/utils/loss.py DFLoss.__call__ on the foreground rows its BboxLoss gathers with
    # the boolean mask, summed instead of its mean over the 4 sides: this suite's reduction.
    positions, foreground = target
    pred_dist, positions = pred_dist[foreground], positions[foreground]
    positions = positions.clamp(0, reg_max - 1 - 0.01)
    tl = positions.long()
    tr = tl + 1
    wl = tr - positions
    wr = 1 - wl
    left = F.cross_entropy(pred_dist, tl, reduction="none") * wl
    return (left + F.cross_entropy(pred_dist, tr, reduction="none") * wr).sum()


SOURCES = {
    "quality": _mmdet_quality_focal_loss,
    "varifocal": _ultralytics_varifocal_loss,
    "asymmetric": _asymmetric_loss,
    "distribution": _ultralytics_distribution_focal_loss,
}


def _build_dfl_cross_entropy(case):
    # DFL's baseline: a plain cross entropy of each foreground row against its nearest bin (the
    # other rows ignored), what the same rows cost with a one-hot target.
    def loss(x, t):
        nearest = torch.where(t[1], t[0].round().long(), IGNORE_INDEX)
        return F.cross_entropy(x, nearest, ignore_index=IGNORE_INDEX, reduction="sum")

    return loss


def _build_source(case):
    return SOURCES[case.loss]


def _build_source_compiled(case):
    return _compiled(SOURCES[case.loss])


def _torchvision_formula(x, t):
    # torchvision.ops.sigmoid_focal_loss's body (torchvision/ops/focal_loss.py), so that its
    # formula is measured, eager and compiled, where torchvision itself does not import.
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** GAMMA)
    loss = (DET_ALPHA * t + (1 - DET_ALPHA) * (1 - t)) * loss
    return loss.sum()


def _build_torchvision(case):
    from torchvision.ops import sigmoid_focal_loss

    return lambda x, t: sigmoid_focal_loss(x, _dense(x, t), alpha=DET_ALPHA, gamma=GAMMA, reduction="sum")


def _build_tv_formula(case):
    return lambda x, t: _torchvision_formula(x, _dense(x, t))


def _build_tv_formula_compiled(case):
    fn = _compiled(_torchvision_formula)
    return lambda x, t: fn(x, _dense(x, t))


def _build_cross_entropy(case):
    return lambda x, t: F.cross_entropy(x, t, ignore_index=IGNORE_INDEX, reduction="mean")


def _build_bce(case):
    return lambda x, t: F.binary_cross_entropy_with_logits(x, _dense(x, t), reduction="sum")


def _valid_count(t):
    return (t != IGNORE_INDEX).sum()


def _build_kornia(case):
    import kornia.losses

    # kornia's mean divides by C x all pixels (README: conventions); its sum over the
    # non-ignored count is this suite's mean. Detection: its binary loss, summed.
    if case.loss == "softmax":
        return lambda x, t: (
            kornia.losses.focal_loss(x, t, alpha=None, gamma=GAMMA, reduction="sum", ignore_index=IGNORE_INDEX)
            / _valid_count(t)
        )
    return lambda x, t: kornia.losses.binary_focal_loss_with_logits(
        x, _dense(x, t), alpha=DET_ALPHA, gamma=GAMMA, reduction="sum"
    )


def _build_monai(case):
    import monai.losses

    # MONAI takes (N, 1, ...) class maps and one-hot encodes them; ignored pixels are
    # masked by its ignore_index. Per-element losses, summed here as this suite's reductions.
    if case.loss == "softmax":
        loss = monai.losses.FocalLoss(
            use_softmax=True, to_onehot_y=True, gamma=GAMMA, reduction="none", ignore_index=IGNORE_INDEX
        )
        return lambda x, t: loss(x, t.unsqueeze(1)).sum() / _valid_count(t)
    loss = monai.losses.FocalLoss(use_softmax=False, gamma=GAMMA, alpha=DET_ALPHA, reduction="none")
    return lambda x, t: loss(x, _dense(x, t)).sum()


def _build_smp(case):
    import segmentation_models_pytorch.losses as smp_losses

    # smp's multiclass focal loss is a one-vs-all *sigmoid* loss (another function): timed,
    # not value-checked.
    loss = smp_losses.FocalLoss("multiclass", gamma=GAMMA, ignore_index=IGNORE_INDEX)
    return lambda x, t: loss(x, t)


def _build_blog_compiled(case):
    return _compiled(_blog_softmax_focal)


def _build_liger(case):
    from liger_kernel.transformers import LigerCrossEntropyLoss

    # Liger writes the gradient into the logits' storage during the forward; repeated calls
    # on one buffer then see gradient values as logits. Timing is unaffected (same bytes).
    loss = LigerCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")
    return lambda x, t: loss(x, t)


OURS = ("softmax", "sigmoid") + FAMILY_LOSSES

PROVIDERS = {
    "triton": Provider("triton", "triton_focal (triton)", OURS, _triton_focal_builder("triton")),
    "compile": Provider("compile", "triton_focal (compile)", OURS, _triton_focal_builder("compile")),
    "reference": Provider("reference", "eager reference", OURS, _triton_focal_builder("reference")),
    "source": Provider("source", "the source's composition, eager", FAMILY_LOSSES, _build_source),
    "source_compiled": Provider(
        "source_compiled", "torch.compile(the source's composition)", FAMILY_LOSSES, _build_source_compiled
    ),
    "blog": Provider("blog", "eager CE + exp(-ce)", ("softmax",), _build_blog),
    "blog_compiled": Provider("blog_compiled", "torch.compile(CE + exp(-ce))", ("softmax",), _build_blog_compiled),
    "torchvision": Provider("torchvision", "torchvision.ops", ("sigmoid",), _build_torchvision),
    "tv_formula": Provider("tv_formula", "torchvision's formula, eager", ("sigmoid",), _build_tv_formula),
    "tv_formula_compiled": Provider(
        "tv_formula_compiled", "torch.compile(torchvision's formula)", ("sigmoid",), _build_tv_formula_compiled
    ),
    "kornia": Provider("kornia", "kornia", ("softmax", "sigmoid"), _build_kornia),
    "monai": Provider("monai", "MONAI", ("softmax", "sigmoid"), _build_monai),
    # smp has no softmax focal loss; its "multiclass" one is one-vs-all sigmoid per class.
    "smp": Provider("smp", "smp (sigmoid per class)", ("softmax",), _build_smp, focal=False, families=("seg", "cpu")),
    "cross_entropy": Provider(
        "cross_entropy", "F.cross_entropy (gamma=0)", ("softmax",), _build_cross_entropy, focal=False
    ),
    "bce": Provider("bce", "F.bce_with_logits (gamma=0)", ("sigmoid",) + SIGMOID_FAMILY, _build_bce, focal=False),
    "dfl_cross_entropy": Provider(
        "dfl_cross_entropy",
        "F.cross_entropy of the nearest bin",
        ("distribution",),
        _build_dfl_cross_entropy,
        focal=False,
    ),
    # Liger's kernel takes 2-D (T, V) logits only: the vocabulary family.
    "liger": Provider(
        "liger", "Liger (plain CE)", ("softmax",), _build_liger, focal=False, families=("vocab", "table")
    ),
}

# What a plain sweep measures; the CPU comparison (--cpu-table) adds the other libraries and
# the compositions compiled by the user (each compiles once per shape).
DEFAULT_PROVIDERS = (
    "triton",
    "compile",
    "reference",
    "blog",
    "torchvision",
    "source",
    "source_compiled",
    "cross_entropy",
    "bce",
    "dfl_cross_entropy",
    "liger",
)
CPU_TABLE_PROVIDERS = (
    "cross_entropy",
    "bce",
    "compile",
    "blog",
    "blog_compiled",
    "tv_formula",
    "tv_formula_compiled",
    "kornia",
    "monai",
    "smp",
)
# The gamma = 0 baseline each loss kind's ratios are taken against.
BASELINE = {
    "softmax": "cross_entropy",
    "sigmoid": "bce",
    "distribution": "dfl_cross_entropy",
    **{loss: "bce" for loss in SIGMOID_FAMILY},
}


def _importable(module):
    try:
        importlib.import_module(module)
        return True
    except Exception:  # an installed package can fail to import for reasons other than absence
        return False


def unavailable_reason(name, device):
    """Why a provider cannot run on ``device`` ("cuda" or "cpu"), or None if it can."""
    if name in ("triton", "compile", "reference"):
        import triton_focal

        if not hasattr(triton_focal, "focal_loss"):
            return "triton_focal.focal_loss is not importable (public API missing)"
    if name == "triton":
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "no CUDA device; set TRITON_INTERPRET=1 to run the interpreter"
        if not _importable("triton"):
            return "triton is not importable"
    if name == "compile" and not hasattr(torch, "compile"):
        return "torch.compile is not available"
    if name in ("triton", "compile"):
        import triton_focal

        available = getattr(triton_focal, "available_backends", None)
        if available is not None:
            try:
                backends = available(torch.device(device))
            except TypeError:
                backends = available()
            if name not in backends:
                return f"triton_focal.available_backends() does not list {name!r} on {device}"
    if name == "torchvision" and not _importable("torchvision.ops"):
        return "torchvision is not importable"
    for peer, module in (
        ("kornia", "kornia.losses"),
        ("monai", "monai.losses"),
        ("smp", "segmentation_models_pytorch.losses"),
    ):
        if name == peer and not _importable(module):
            return f'{module} is not importable (pip install -e ".[peers]")'
    if name in ("blog_compiled", "tv_formula_compiled", "source_compiled") and not hasattr(torch, "compile"):
        return "torch.compile is not available"
    if name == "liger":
        if not _importable("liger_kernel.transformers"):
            return "liger_kernel is not importable"
        if device != "cuda":
            return "Liger's kernels need a GPU"
    return None


def select(names, device):
    """The requested providers that can run, and (name, reason) for the rest."""
    chosen, skipped = [], []
    for name in names:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; expected some of {sorted(PROVIDERS)}")
        reason = unavailable_reason(name, device)
        if reason is None:
            chosen.append(PROVIDERS[name])
        else:
            skipped.append((name, reason))
    return chosen, skipped
