"""The benchmark families: which shapes are measured, and how many bytes each must move.

Every family has a GPU grid (the sizes people train at) and a CPU grid scaled down so the
suite still runs end to end on a machine without a GPU. ``--quick`` keeps a few points.
"""

from dataclasses import dataclass, replace

import torch

GAMMA = 2.0
DET_ALPHA = 0.25
IGNORE_INDEX = -100
# Share of segmentation pixels / tokens labelled ignore_index (void pixels, padding).
IGNORED_FRACTION = 0.02
# Share of detection anchors that match no object (target == C, background).
BACKGROUND_FRACTION = 0.9
DET_CLASSES = 80  # COCO

FAMILIES = ("seg", "vocab", "det", "table", "cpu", "family")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    """One input shape of one family.

    Attributes:
        family: "seg", "vocab", "det" or "table".
        series: which sweep of the family it belongs to (one curve set per series).
        x_name: the swept quantity ("C", "H*W", "V", "T", "anchors").
        x: its value, the plots' x axis.
        shape: the logits' shape; class dimension 1.
        target: "index" (integer class indices), "index+score" (class indices and a float score
            per row, as a pair), "positions" (DFL's float positions and a foreground mask per
            row, as a pair) or "dense" (float, the logits' shape).
        loss: "softmax", "sigmoid", or a focal-family loss (``FAMILY_LOSSES``).
    """

    family: str
    series: str
    x_name: str
    x: int
    shape: tuple
    target: str
    loss: str

    @property
    def name(self):
        return f"{self.family}/{self.series} {self.x_name}={self.x} {tuple(self.shape)} {self.target}"


def _seg(series, x_name, x, shape):
    return Case("seg", series, x_name, x, shape, "index", "softmax")


def _vocab(series, x_name, x, shape):
    return Case("vocab", series, x_name, x, shape, "index", "softmax")


def _det(target, anchors, classes=DET_CLASSES):
    return Case("det", target, "anchors", anchors, (anchors, classes), target, "sigmoid")


# The focal family's sigmoid losses and the shapes they train at: QFL / VFL on COCO's 80 classes
# with an IoU score per anchor, ASL on 1000 multi-label tags.
FAMILY_LOSSES = ("quality", "varifocal", "asymmetric", "distribution")
DFL_BINS = 16  # YOLOv8's reg_max
FOREGROUND_FRACTION = 0.1  # share of DFL's anchors that are foreground
POSITIVE_FRACTION = 0.01  # share of ASL's tags that are present


def _family(gpu, quick):
    anchors = 1_600_000 if gpu else (4_000 if quick else 16_000)
    rows = 65536 if gpu else (256 if quick else 1024)
    sides = 16 * 8400 * 4 if gpu else (4 * 8400 if quick else 4 * 8400 * 4)  # YOLOv8 at 640 px: batch 16
    return [
        Case("family", "qfl", "anchors", anchors, (anchors, DET_CLASSES), "index+score", "quality"),
        Case("family", "vfl", "anchors", anchors, (anchors, DET_CLASSES), "index+score", "varifocal"),
        Case("family", "asl", "rows", rows, (rows, 1000), "dense", "asymmetric"),
        Case("family", "dfl", "box sides", sides, (sides, DFL_BINS), "positions", "distribution"),
    ]


def family_cases(family, gpu, quick=False):
    """The cases of one family.

    Args:
        family: one of ``FAMILIES``.
        gpu: True for the GPU grid, False for the CPU grid (scaled down about 1000x).
        quick: keep only a few points per series (a smoke run).

    Returns:
        list of ``Case``.
    """
    if family == "seg":
        # Cityscapes (19), VOC (21), ADE20K (150), a 1000-class stress point; then the image
        # size growing at ADE20K's 150 classes. Channels-first (N, C, H, W), as models emit it.
        batch, side = (8, 512) if gpu else (1, 32)
        classes = (19, 150) if quick else (19, 21, 150, 1000)
        sides = (256, 512) if gpu else (16, 32)
        if not quick:
            sides = (128, 256, 384, 512, 768, 1024) if gpu else (16, 32, 48, 64)
        return [_seg("classes", "C", c, (batch, c, side, side)) for c in classes] + [
            _seg("pixels", "H*W", s * s, (batch, 150, s, s)) for s in sides
        ]
    if family == "vocab":
        # Llama-2 (32000), GPT-2 (50257), Llama-3 (128256), Gemma (256000) vocabularies at
        # 8192 tokens; then the token count growing at Llama-3's vocabulary.
        tokens = 8192 if gpu else (8 if quick else 16)
        vocabs = (32000, 128256) if quick else (32000, 50257, 128256, 256000)
        counts = (4096, 8192) if gpu else (4, 8)
        if not quick:
            counts = (1024, 2048, 4096, 8192, 16384) if gpu else (4, 8, 16, 32)
        return [_vocab("vocab", "V", v, (tokens, v)) for v in vocabs] + [
            _vocab("tokens", "T", t, (t, 128256)) for t in counts
        ]
    if family == "det":
        # RetinaNet-style anchors x 80 COCO classes; dense one-hot targets (torchvision's
        # interface) and class-index targets (mmdet's), where no one-hot tensor need exist.
        anchors = (100_000, 200_000, 400_000, 800_000, 1_600_000, 2_000_000)
        if not gpu:
            anchors = tuple(a // 100 for a in anchors)
        if quick:
            anchors = anchors[:2]
        return [_det(target, a) for target in ("dense", "index") for a in anchors]
    if family == "table":
        return [replace(case, family="table") for case in _headline_cases(gpu)]
    if family == "cpu":
        return [replace(case, family="cpu") for case in cpu_cases(quick)]
    if family == "family":
        return _family(gpu, quick)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _headline_cases(gpu):
    """The four headline cases of the README, measured bf16 forward+backward."""
    if gpu:
        return [
            _seg("ade20k", "H*W", 512 * 512, (16, 150, 512, 512)),
            _seg("cityscapes", "H*W", 512 * 1024, (8, 19, 512, 1024)),
            _vocab("llama3", "T", 8192, (8192, 128256)),
            _det("dense", 1_600_000),
        ]
    return [
        _seg("ade20k", "H*W", 32 * 32, (1, 150, 32, 32)),
        _seg("cityscapes", "H*W", 32 * 64, (1, 19, 32, 64)),
        _vocab("llama3", "T", 16, (16, 128256)),
        _det("dense", 16_000),
    ]


def cpu_cases(quick=False):
    """The CPU comparison (``--cpu-table``): shapes a laptop or a CPU CI trains at, where the
    compile fallback is what ``backend="auto"`` runs. ``quick`` halves each image side and
    quarters the rows (a smoke run)."""
    div = 2 if quick else 1
    return [
        _seg("cityscapes", "H*W", (256 // div) ** 2, (4, 19, 256 // div, 256 // div)),
        _seg("ade20k", "H*W", (128 // div) ** 2, (2, 150, 128 // div, 128 // div)),
        _vocab("llama2", "T", 512 // div**2, (512 // div**2, 32000)),
        _det("dense", 100_000 // div**2),
    ]


def make_inputs(case, dtype, device, seed=0):
    """Random logits (requiring grad) and targets for a case.

    Returns:
        x: logits, ``case.shape``, ``dtype``, requires_grad.
        target: int64 ``(N, d1..dk)`` class indices, dense ``case.shape`` in ``dtype``, or for
            "index+score" the pair (class indices, float32 scores in ``[0, 1]``).
    """
    # Drawn on the device itself: fast at GPU sizes, and the same values on every call, so
    # each provider gets fresh, identical inputs (Liger overwrites its logits in place).
    gen = torch.Generator(device=device).manual_seed(seed)
    # Scale 3: probabilities spread from near 0 to near 1, like a half-trained model.
    x = torch.randn(case.shape, generator=gen, device=device, dtype=dtype).mul_(3.0)
    x.requires_grad_(True)
    classes = case.shape[1]
    index_shape = (case.shape[0],) + tuple(case.shape[2:])
    labels = torch.randint(0, classes, index_shape, generator=gen, device=device)
    if case.loss == "asymmetric":
        return x, (torch.rand(case.shape, generator=gen, device=device) < POSITIVE_FRACTION).to(dtype)
    if case.loss == "distribution":
        # Positions inside ultralytics' clamp (n - 1.01), so that its DFL and ours agree; one
        # foreground flag per anchor, shared by its 4 box sides.
        rows = case.shape[0]
        positions = torch.rand(rows, generator=gen, device=device) * (DFL_BINS - 1.01)
        foreground = torch.rand(rows // 4, 1, generator=gen, device=device) < FOREGROUND_FRACTION
        return x, (positions, foreground.expand(-1, 4).reshape(rows))
    if case.loss == "softmax":
        ignored = torch.rand(index_shape, generator=gen, device=device) < IGNORED_FRACTION
        target = labels.masked_fill_(ignored, IGNORE_INDEX)
    else:
        background = torch.rand(index_shape, generator=gen, device=device) < BACKGROUND_FRACTION
        target = labels.masked_fill_(background, classes)
        if case.target == "dense":
            target = torch.nn.functional.one_hot(target, classes + 1)[:, :classes].to(dtype)
        if case.target == "index+score":
            target = (target, torch.rand(index_shape, generator=gen, device=device))
    return x, target


def bytes_moved(case, dtype, mode):
    """The fewest bytes a mode must move through memory: each input read once, each output
    written once. Achieved GB/s and the copy-bandwidth floor both use this count.

    forward:          read logits, read target, write loss (0-dim: nothing to count)
    backward:         read logits (or what the forward saved, as large), read target, write grad
    forward+backward: read logits, read target, write grad (the loss is 0-dim)
    """
    numel = 1
    for d in case.shape:
        numel *= d
    elem = torch.empty((), dtype=dtype).element_size()
    logits = numel * elem
    if case.target == "dense":
        target = numel * elem
    else:
        target = (numel // case.shape[1]) * 8  # int64 class indices, one per row/pixel
    if case.target == "index+score":
        target += (numel // case.shape[1]) * 4  # and a float32 score per row
    if case.target == "positions":
        target = (numel // case.shape[1]) * 5  # a float32 position and a bool flag per row
    grad = logits if mode in ("bwd", "fwd+bwd") else 0
    return logits + target + grad
