"""The headline cases: what the kernels are judged on, as workloads the model can count."""

import dataclasses

from .capture import Counted, _counting_aot_backend, _Recorder, _torch_op_counter, recording

# (name, kind, headline shape, scaled-down shape, bf16 target). Targets: the calibrated model's
# pessimistic % of the floor for forward + backward (``loss.backward()``), the same in float32;
# for a ``grad_output`` other than 1 (eager or compiled) at most 1.5x the floor's bytes (1.7 with
# dense sigmoid targets). The scaled-down shapes keep what a program sees (classes, a row's
# length, enough positions for a full tile) and cut the count of programs; the model checks
# that they launch the same kernels with the same constexprs.
SEG_A = ("seg (16,150,512,512)", "softmax", (16, 150, 512, 512), (1, 150, 64, 64), 65)
SEG_B = ("seg (8,19,512,1024)", "softmax", (8, 19, 512, 1024), (1, 19, 64, 128), 80)
VOCAB = ("vocab (8192,128256)", "softmax", (8192, 128256), (4, 128256), 80)
DET_INDEX = ("det (1.6M,80) index", "sigmoid_index", (1_600_000, 80), (4096, 80), 85)
DET_DENSE = ("det (1.6M,80) dense", "sigmoid_dense", (1_600_000, 80), (4096, 80), 85)
# The focal family, bf16, loss.backward(): class indices with a score per anchor (QFL, VFL at
# COCO's 80 classes), dense multi-label targets (ASL at 1000 tags).
QFL = ("qfl (1.6M,80) index+score", "quality_index", (1_600_000, 80), (4096, 80), 80)
VFL = ("vfl (1.6M,80) index+score", "varifocal_index", (1_600_000, 80), (4096, 80), 80)
ASL = ("asl (65536,1000) dense", "asymmetric_dense", (65536, 1000), (128, 1000), 80)
# DFL: YOLOv8 at 640 px, batch 16: 8400 anchors x 4 box sides of 16 bins, called as its box loss
# calls it (foreground mask, a weight per anchor, the sum over the score total).
DFL = ("dfl (537600,16) positions", "distribution", (16 * 8400 * 4, 16), (4096, 16), 80)
FAMILY = (QFL, VFL, ASL, DFL)
SMOOTHING_TARGET = 55
TRAFFIC_LIMIT, TRAFFIC_LIMIT_DENSE = 1.5, 1.7


@dataclasses.dataclass
class Case:
    family: str  # the headline case's name
    kind: str  # softmax, sigmoid_index, sigmoid_dense, or a family loss (FAMILY)
    shape: tuple
    small_shape: tuple
    dtype: str  # bf16, fp32
    options: str = ""  # "", "label_smoothing 0.1", "per-class gamma/alpha/weight"
    grad_output: float = 1.0
    compiled: bool = False
    target_pct_of_floor: object = None
    target_bytes_over_floor: object = None
    headline: bool = False  # one of the bf16 loss.backward() targets of the plain losses
    family_loss: bool = False  # one of the focal family's bf16 loss.backward() targets

    @property
    def name(self):
        words = [self.family, self.dtype]
        if self.options:
            words.append(self.options)
        words.append("loss.backward()" if self.grad_output == 1 else f"grad_output {self.grad_output:g}")
        if self.compiled:
            words.append("torch.compile")
        return ", ".join(words)


def all_cases():
    cases = []
    for family, kind, shape, small, target in (SEG_A, SEG_B, VOCAB, DET_INDEX, DET_DENSE):
        variants = [("", target)] + ([("label_smoothing 0.1", SMOOTHING_TARGET)] if family == VOCAB[0] else [])
        for options, target in variants:
            for dtype in ("bf16", "fp32"):
                cases.append(
                    Case(
                        family, kind, shape, small, dtype, options, target_pct_of_floor=target, headline=dtype == "bf16"
                    )
                )
    for family, kind, shape, small, _ in (SEG_A, DET_INDEX):
        cases.append(Case(family, kind, shape, small, "bf16", "per-class gamma/alpha/weight"))
    for family, kind, shape, small, target in FAMILY:
        cases.append(Case(family, kind, shape, small, "bf16", target_pct_of_floor=target, family_loss=True))
    for family, kind, shape, small, _ in (SEG_A, SEG_B, VOCAB, DET_INDEX, DET_DENSE):
        limit = TRAFFIC_LIMIT_DENSE if kind == "sigmoid_dense" else TRAFFIC_LIMIT
        for compiled in (False, True):
            cases.append(
                Case(
                    family,
                    kind,
                    shape,
                    small,
                    "bf16",
                    grad_output=2.0,
                    compiled=compiled,
                    target_bytes_over_floor=limit,
                )
            )
    return cases


def _dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def _inputs(case, shape, headline, device="cpu"):
    """Logits, targets and keyword arguments on ``device``. Where ``headline`` (the model's
    capture: the kernels are not executed) the logits are left uninitialized, so the pages are
    never touched; otherwise they are random (a GPU measurement times real data, not zeros)."""
    import torch

    g = torch.Generator(device).manual_seed(0)
    on = {"generator": g, "device": device}
    dtype = _dtype(case.dtype)

    def dense_target():  # 1% positives
        return (
            torch.zeros(shape, dtype=dtype, device=device) if headline else (torch.rand(shape, **on) < 0.01).to(dtype)
        )

    x = torch.empty(shape, dtype=dtype, device=device) if headline else torch.randn(shape, **on).to(dtype)
    x.requires_grad_(True)
    classes = shape[1]
    per_class = case.options == "per-class gamma/alpha/weight"
    if case.kind == "softmax":
        target = torch.randint(0, classes, (shape[0],) + tuple(shape[2:]), **on)
        kwargs = {"gamma": 2.0, "reduction": "mean"}
        if case.options == "label_smoothing 0.1":
            kwargs["label_smoothing"] = 0.1
        if per_class:
            kwargs.update(
                gamma=torch.rand(classes, **on) + 1.5,
                alpha=torch.rand(classes, **on) + 0.5,
                weight=torch.rand(classes, **on) + 0.5,
            )
    elif case.kind in ("quality_index", "varifocal_index"):
        target = torch.randint(0, classes + 1, (shape[0],), **on)  # classes: background
        kwargs = {"score": torch.rand(shape[0], **on), "reduction": "sum", "normalizer": 100.0}
    elif case.kind == "distribution":
        rows = shape[0]
        target = torch.rand(rows, **on) * (classes - 1)
        anchors = rows // 4
        kwargs = {
            "mask": (torch.rand(anchors, 1, **on) < 0.1).expand(anchors, 4).reshape(rows),
            "weight": torch.rand(anchors, 1, **on).expand(anchors, 4).reshape(rows),
            "reduction": "sum",
            "normalizer": 100.0,
        }
    elif case.kind == "asymmetric_dense":
        target = dense_target()
        kwargs = {}
    else:
        if case.kind == "sigmoid_index":
            target = torch.randint(0, classes + 1, (shape[0],), **on)  # classes: background
        else:
            target = dense_target()
        kwargs = {"alpha": 0.25, "gamma": 2.0, "reduction": "sum", "normalizer": 100.0}
        if per_class:
            kwargs.update(gamma=torch.rand(classes, **on) + 1.5, weight=torch.rand(classes, **on) + 0.5)
    return x, target, kwargs


def public_loss(case):
    """The public function the case calls (any backend)."""
    import triton_focal

    return {
        "softmax": triton_focal.focal_loss,
        "quality_index": triton_focal.quality_focal_loss,
        "varifocal_index": triton_focal.varifocal_loss,
        "asymmetric_dense": triton_focal.asymmetric_loss,
        "distribution": triton_focal.distribution_focal_loss,
    }.get(case.kind, triton_focal.sigmoid_focal_loss)


def _loss_fn(case):
    fn = public_loss(case)
    return lambda x, t, kw: fn(x, t, backend="triton", **kw)


def run_case(case, headline):
    """Forward + backward through the public API; returns (launches, torch-op bytes by op)."""
    import torch

    shape = case.shape if headline else case.small_shape
    x, target, kwargs = _inputs(case, shape, headline)
    loss_fn = _loss_fn(case)
    torch_bytes = {}
    if case.compiled:
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda x, t: loss_fn(x, t, kwargs),
            fullgraph=True,
            dynamic=False,
            backend=_counting_aot_backend(torch_bytes),
        )
        forward = lambda: compiled(x, target)
    else:
        forward = lambda: loss_fn(x, target, kwargs)

    def step():
        loss = forward()
        out = loss * case.grad_output if case.grad_output != 1 else loss
        torch.autograd.grad(out, x)  # not .backward(): accumulating into x.grad is autograd's, not the loss's

    if case.compiled:  # Dynamo and AOTAutograd trace outside the count (kernels captured, not run)
        with recording("capture"):
            step()
    if not headline:
        # One uncounted step first, as in training: the device's gradient policy
        # (triton_focal/ops/grad_policy.py) settles for this grad_output, so the counted step
        # is the steady state (forwards store the gradient only where grad_output is 1).
        step()
    _Recorder.launches = []
    torch_bytes.clear()
    _Recorder.mode = "capture" if headline else "count"
    try:
        if case.compiled:  # the graphs count their own ops (Dynamo refuses a dispatch mode around it)
            _Recorder.counting_graphs = True
            step()
        else:
            with _torch_op_counter(torch_bytes):
                step()
    finally:
        _Recorder.mode = "off"
        _Recorder.counting_graphs = False
    floor = x.numel() * x.element_size() * 2 + target.numel() * target.element_size()
    for name in ("score", "mask"):  # read once too (a weight shared by 4 box sides: a quarter of it)
        if kwargs.get(name) is not None:
            floor += kwargs[name].numel() * kwargs[name].element_size()
    return _Recorder.launches, torch_bytes, floor, x.numel()


def count_case(case):
    """The case at its headline shape (captured) and scaled-down shape (counted)."""
    big, _, floor, numel = run_case(case, headline=True)
    small, torch_ops, _, small_numel = run_case(case, headline=False)
    return Counted(big, small, torch_ops, numel, small_numel, floor)


def select(cases, names="", dtypes="", headline_only=False, family_only=False):
    out = []
    for case in cases:
        if names and not any(n in case.family or n in case.kind for n in names.split(",")):
            continue
        if dtypes and case.dtype not in dtypes.split(","):
            continue
        if headline_only and not case.headline:
            continue
        if family_only and not case.family_loss:
            continue
        out.append(case)
    return out
