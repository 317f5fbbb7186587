"""Re-create each measured Liger-Kernel call on the CPU, under the Triton interpreter.

``workload(runner, shape, dtype, phase, headline, liger_version)`` builds the inputs and
modules of one benchmark point and returns a :class:`Workload`: ``prepare`` (untimed setup,
e.g. the forward before a "backward" point) and ``step`` (exactly what Liger's benchmark
script times).  ``TRITON_INTERPRET=1`` must be set before triton is first imported.

* ``headline=True``: the measured shape.  The caller records the kernel launches without
  executing them, so the big tensors are ``torch.empty`` (never touched by a kernel) and
  nothing here reads a kernel's output on the host.
* ``headline=False``: ``scaled_down(runner, shape, liger_version)``, a shape that launches the
  same kernels with the same constexprs and num_warps and the same work per program (loop
  trips), only fewer programs; the kernels really run in the interpreter (a few seconds).
  ``Workload.elements`` (same definition at both sizes) scales the counts up.

Only Triton launches are what the runners re-create for counting; the torch ops Liger's
Python does around them (e.g. the ``amax`` and the bf16 cast of the gradient in the Megatron
cross-entropy, the ``.sum()`` the benchmarks backpropagate from) run on the CPU and are not
kernel launches the interpreter sees.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import textwrap
from types import SimpleNamespace
from typing import Callable

import torch

from perf.calibration.extract import MEASURED_RELEASE
from perf.calibration.liger import import_liger

H100_SMS = 132  # H100 SXM5 (80GB HBM3): the SM count persistent grids are sized from
SCALED_ELEMENTS = 1 << 21  # at most this many input elements in a scaled-down run
SCALED_MAX_PROGRAMS = 256  # and at most this many programs per one-program-per-row launch
SCALED_MAX_SMS = 8  # "SMs" of a scaled-down persistent grid

RUNNERS: dict[str, str] = {
    "liger_megatron_cross_entropy": (
        "LigerMegatronCrossEntropy (TP=1) on (S, B, V) logits, as benchmark_megatron_cross_entropy.py; "
        "its 'backward' re-runs the forward too (the script's convention)"
    ),
    "liger_layer_norm": (
        "LigerLayerNorm(N) on (M, N), as benchmark_layer_norm.py (backward: y.backward(dy) after an untimed forward)"
    ),
    "liger_relu_squared": (
        "LigerReLUSquared on (M, N), as benchmark_relu_squared.py (backward: y.backward(dy) after an untimed forward)"
    ),
    "liger_megatron_rms_norm": (
        "LigerMegatronRMSNorm(H) bf16 on (S, B, H), as benchmark_megatron_rms_norm.py; "
        "its 'backward' re-runs the forward too (the script's convention)"
    ),
    "liger_cross_entropy": "LigerCrossEntropyLoss(reduction='mean') on (rows, V) logits; phases forward, fwd+bwd",
}

PHASES = {
    "liger_megatron_cross_entropy": ("forward", "backward", "fwd+bwd"),
    "liger_layer_norm": ("forward", "backward", "fwd+bwd"),
    "liger_relu_squared": ("forward", "backward", "fwd+bwd"),
    "liger_megatron_rms_norm": ("forward", "backward", "fwd+bwd"),
    "liger_cross_entropy": ("forward", "fwd+bwd"),
}

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclasses.dataclass
class Workload:
    prepare: Callable[[], None]  # untimed setup that launches kernels; may be a no-op
    step: Callable[[], None]  # exactly what the benchmark times
    elements: int  # the size the work scales with (same definition at both sizes)


def release_for(runner: str, liger_version: str) -> str:
    """The release to import for ``liger_version``: itself, or for one of Liger's own row
    labels (a source tree between releases), the release with that tree's kernel code."""
    return MEASURED_RELEASE.get(runner, {}).get(liger_version, liger_version)


def _check(runner: str, phase: str) -> None:
    if runner not in RUNNERS:
        raise KeyError(f"unknown runner {runner!r}; known: {sorted(RUNNERS)}")
    if phase not in PHASES[runner]:
        raise ValueError(f"{runner} has phases {PHASES[runner]}, not {phase!r}")
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the calibration runners need TRITON_INTERPRET=1 set before triton is imported")


def _noop() -> None:
    pass


def _scaled_rows(rows: int, row_len: int) -> int:
    return max(1, min(rows, SCALED_MAX_PROGRAMS, SCALED_ELEMENTS // row_len))


def _rms_rows_per_program(rows: int, sms: int) -> int:
    return math.ceil(rows / sms)


def scaled_down(runner: str, shape: dict, liger_version: str) -> dict:
    """A smaller shape that launches the same kernels with the same constexprs, num_warps and
    per-program loop trips as ``shape`` does, only with fewer programs."""
    if runner not in RUNNERS:
        raise KeyError(f"unknown runner {runner!r}")
    if runner == "liger_megatron_cross_entropy":
        # One program per token row, each looping over V: fewer rows, same V.
        return {"S": _scaled_rows(shape["S"] * shape["B"], shape["V"]), "B": 1, "V": shape["V"]}
    if runner in ("liger_layer_norm", "liger_relu_squared"):
        return {"M": _scaled_rows(shape["M"], shape["N"]), "N": shape["N"]}
    if runner == "liger_cross_entropy":
        return {"rows": _scaled_rows(shape["rows"], shape["V"]), "V": shape["V"]}
    if runner == "liger_megatron_rms_norm":
        # The backward grid is persistent: one program per SM, each looping over
        # ceil(rows / SMs) rows.  Fewer "SMs" and rows = SMs * that count keep the loop.
        rows = shape["S"] * shape["B"]
        rpp = _rms_rows_per_program(rows, shape.get("sms", H100_SMS))
        sms = max(1, min(SCALED_MAX_SMS, SCALED_ELEMENTS // (rpp * shape["H"])))
        return {"S": sms * rpp, "B": 1, "H": shape["H"], "sms": sms}
    raise AssertionError(runner)


class _Inputs:
    """Inputs of one point: ``torch.empty`` at the headline size (the kernels are recorded,
    not run), seeded random values where the kernels really run."""

    def __init__(self, headline: bool):
        self.headline = headline
        self.gen = torch.Generator().manual_seed(0)

    def float(self, size, dtype, requires_grad=False):
        if self.headline:
            t = torch.empty(size, dtype=dtype)
        else:
            t = torch.randn(size, generator=self.gen, dtype=torch.float32).to(dtype)
        return t.requires_grad_(requires_grad)

    def index(self, high, size):
        # Cheap at any size, and Liger reads the targets on the host (n_non_ignore).
        return torch.randint(high, size, generator=self.gen)


def _rebind(module, name: str, old: str, new: str) -> None:
    """Redefine ``module.name`` from its source with ``old`` replaced by ``new`` (once)."""
    flag = f"_calibration_rebound_{name}"
    if getattr(module, flag, False):
        return
    src = textwrap.dedent(inspect.getsource(getattr(module, name)))
    if src.count(old) != 1:
        raise RuntimeError(f"{module.__name__}.{name}: expected {old!r} once in its source")
    exec(compile(src.replace(old, new), f"<calibration: {module.__name__}.{name}>", "exec"), module.__dict__)
    setattr(module, flag, True)


def _scoped(patches, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run with ``module.name = value`` for each (module, name, value), restored after."""
    if not patches:
        return fn

    def run() -> None:
        saved = [(m, n, m.__dict__.get(n, _MISSING)) for m, n, _ in patches]
        for m, n, v in patches:
            setattr(m, n, v)
        try:
            fn()
        finally:
            for m, n, v in saved:
                if v is _MISSING:
                    delattr(m, n)
                else:
                    setattr(m, n, v)

    return run


_MISSING = object()


def _interpretable_rsqrt(module):
    """Liger's norm kernels call libdevice's ``rsqrt`` (imported into the ops module), which the
    Triton interpreter does not implement (it yields None); ``tl.rsqrt`` is the same math and
    is interpreted.  Swapped in only while a workload runs, so compiling the kernel sees the
    original."""
    import triton.language as tl

    def rsqrt(x):  # looked up when the kernel runs, once the interpreter has patched tl.math
        return tl.math.rsqrt(x)

    return (module, "rsqrt", rsqrt)


def _fwd_bwd_phases(phase, forward, x, dy):
    """layer_norm / relu_squared benchmarks: triton.testing.do_bench with grad_to_none=[x]
    (the reset is untimed; it only drops x.grad so the backward allocates a fresh one)."""
    if phase == "forward":
        return _noop, lambda: forward()
    state = {}

    def backward():
        x.grad = None
        state["y"].backward(dy, retain_graph=True)

    if phase == "backward":
        return (lambda: state.__setitem__("y", forward())), backward

    def full():
        x.grad = None
        forward().backward(dy, retain_graph=True)

    return _noop, full


def workload(runner: str, shape: dict, dtype: str, phase: str, headline: bool, liger_version: str) -> Workload:
    _check(runner, phase)
    dt = _DTYPES[dtype]
    import_liger(release_for(runner, liger_version))
    inputs = _Inputs(headline)

    if runner == "liger_megatron_cross_entropy":
        from liger_kernel.megatron import LigerMegatronCrossEntropy

        S, B, V = shape["S"], shape["B"], shape["V"]
        logits = inputs.float((S, B, V), dt, requires_grad=True)
        target = inputs.index(V, (S, B))
        ce = LigerMegatronCrossEntropy()
        # The script passes tp_group=dist.group.WORLD of size 1; Liger treats that exactly
        # like None (no all-reduces), so no process group is set up here.
        if phase == "forward":
            step = lambda: ce(logits, target, tp_group=None)  # noqa: E731
        else:
            # 'backward' and 'full' time the same thing in this script: reset the grad,
            # forward, out.sum().backward().
            def step():
                logits.grad = None
                ce(logits, target, tp_group=None).sum().backward()

        return Workload(_noop, step, S * B * V)

    if runner in ("liger_layer_norm", "liger_relu_squared"):
        M, N = shape["M"], shape["N"]
        x = inputs.float((M, N), dt, requires_grad=True)
        dy = inputs.float((M, N), dt)
        if runner == "liger_layer_norm":
            from liger_kernel.transformers.layer_norm import LigerLayerNorm

            module = LigerLayerNorm(hidden_size=N)  # fp32 weight and bias, as in the script
        else:
            from liger_kernel.transformers.relu_squared import LigerReLUSquared

            module = LigerReLUSquared()
        prepare, step = _fwd_bwd_phases(phase, lambda: module(x), x, dy)
        patches = []
        if runner == "liger_layer_norm":
            import liger_kernel.ops.layer_norm as ln_ops

            patches.append(_interpretable_rsqrt(ln_ops))
        return Workload(_scoped(patches, prepare), _scoped(patches, step), M * N)

    if runner == "liger_megatron_rms_norm":
        import liger_kernel.ops.rms_norm as rms_ops
        from liger_kernel.megatron import LigerMegatronRMSNorm

        # rms_norm_backward sizes its persistent grid from the device: sm_count = 1, then
        # multi_processor_count when X.device.type == "cuda".  CPU tensors never take that
        # branch, so its `sm_count = 1` is made to read the SM count this point stands for
        # (132 for the H100 headline, fewer for a scaled-down run).
        _rebind(rms_ops, "rms_norm_backward", "    sm_count = 1\n", "    sm_count = _calibration_sm_count\n")
        S, B, H = shape["S"], shape["B"], shape["H"]
        config = SimpleNamespace(
            normalization="RMSNorm",
            sequence_parallel=False,
            layernorm_zero_centered_gamma=False,
            persist_layer_norm=False,
            memory_efficient_layer_norm=False,
        )
        layer = LigerMegatronRMSNorm(config=config, hidden_size=H, eps=1e-6).to(dt)
        x = inputs.float((S, B, H), dt, requires_grad=True)
        if phase == "forward":
            step = lambda: layer(x)  # noqa: E731
        elif phase == "backward":

            def step():
                if x.grad is not None:
                    x.grad = None
                layer(x).sum().backward()

        else:

            def step():  # the script's 'full' does not reset x.grad (it accumulates)
                layer(x).sum().backward()

        patches = [_interpretable_rsqrt(rms_ops), (rms_ops, "_calibration_sm_count", shape.get("sms", H100_SMS))]
        return Workload(_noop, _scoped(patches, step), S * B * H)

    if runner == "liger_cross_entropy":
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

        rows, V = shape["rows"], shape["V"]
        x = inputs.float((rows, V), dt, requires_grad=True)
        target = inputs.index(V, (rows,))
        loss_fn = LigerCrossEntropyLoss(reduction="mean")
        if phase == "forward":
            step = lambda: loss_fn(x, target)  # noqa: E731
        else:

            def step():
                x.grad = None
                loss_fn(x, target).backward()

        return Workload(_noop, step, rows * V)

    raise AssertionError(runner)
