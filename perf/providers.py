"""The implementations measured side by side, each behind the same ``(x, target) -> loss``.

Softmax families (seg, vocab) compute ``focal_loss(gamma=2, reduction="mean")`` with
``ignore_index``; the detection family computes ``sigmoid_focal_loss(alpha=0.25, gamma=2,
reduction="sum")``. Other libraries are called with their own arguments and converted to
these reductions with scalar operations (README: the conventions table). ``F.cross_entropy``
/ ``F.binary_cross_entropy_with_logits`` are the gamma = 0 baselines: what the same bytes
cost without the focal term. Liger's cross entropy is plain CE too and is labelled so.
"""

import importlib
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .cases import DET_ALPHA, GAMMA, IGNORE_INDEX


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
    # Class indices (target == C: background) to the one-hot a dense-target API needs.
    if t.is_floating_point():
        return t
    return F.one_hot(t, x.shape[1] + 1)[:, : x.shape[1]].to(x.dtype)


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


PROVIDERS = {
    "triton": Provider("triton", "triton_focal (triton)", ("softmax", "sigmoid"), _triton_focal_builder("triton")),
    "compile": Provider("compile", "triton_focal (compile)", ("softmax", "sigmoid"), _triton_focal_builder("compile")),
    "reference": Provider("reference", "eager reference", ("softmax", "sigmoid"), _triton_focal_builder("reference")),
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
    "bce": Provider("bce", "F.bce_with_logits (gamma=0)", ("sigmoid",), _build_bce, focal=False),
    # Liger's kernel takes 2-D (T, V) logits only: the vocabulary family.
    "liger": Provider(
        "liger", "Liger (plain CE)", ("softmax",), _build_liger, focal=False, families=("vocab", "table")
    ),
}

# What a plain sweep measures; the CPU comparison (--cpu-table) adds the other libraries and
# the compositions compiled by the user (each compiles once per shape).
DEFAULT_PROVIDERS = ("triton", "compile", "reference", "blog", "torchvision", "cross_entropy", "bce", "liger")
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
BASELINE = {"softmax": "cross_entropy", "sigmoid": "bce"}


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
    if name in ("blog_compiled", "tv_formula_compiled") and not hasattr(torch, "compile"):
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
