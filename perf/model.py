"""``python -m perf.model``: what the kernels would cost on an H100, read from their machine code
on a machine without a GPU. A model, not a measurement.

For every case below it

1. runs the public API (``backend="triton"``, forward + backward) twice under
   ``TRITON_INTERPRET=1``: at the headline shape, where every Triton launch is captured (kernel,
   grid, arguments, constexprs, options) and not executed, and at a scaled-down shape with the
   same launch configuration, where the interpreter executes the kernels and counts, per program,
   the bytes every load and store moves (masked lanes excluded), the addresses it re-reads and
   how many bytes it loaded in between, the trips of every ``range`` loop and the source lines
   it executed; a dispatch mode counts the bytes of the torch ops around the kernels;
2. compiles every captured launch exactly as the JIT would for sm_90 (``perf/sass.py``; a
   subprocess without the interpreter), and reads the SASS: registers, local memory (spills),
   shared memory, occupancy, and the dynamic warp instructions and MUFU operations: each
   instruction weighted by how often it runs, from the loops found in the SASS (backward
   branches), mapped to their source loops through the line info, times the loop's measured
   trips (divided by ptxas's unroll factor, read from the loop counter's increment);
3. models each launch's time as ``max(issue, MUFU, DRAM bytes / bandwidth)``, adds the torch
   ops' bytes at the bandwidth, and compares with the floor: read the logits once, read the
   targets once, write the gradient once.

Counts from the scaled-down run are multiplied by ``headline logits elements / scaled-down logits
elements``; the scaled-down shapes keep the per-program work (tile, loop trips) of the headline
launch, and the model refuses a case whose scaled-down launches differ in kernel or constexprs.

    python -m perf.model                     # print the table; writes nothing
    python -m perf.model --write             # also write perf/results/model/{model.json,model.md,model.png}
    python -m perf.model --cases seg,det --dtypes bf16
    git worktree add /tmp/tf-before 9ecf09f  # the kernels before the redesign (issue 10)
    python -m perf.model --tree /tmp/tf-before --out perf/results/model/before.json
"""

import argparse
import ast
import builtins
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

# --- the device, as a model -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """An H100 SXM (sm_90) as this model sees it. Every number the model uses is here.

    Not measured: the issue rate and MUFU rate are the architecture's per-SM throughputs, the
    clock is the boost clock, the bandwidth is a copy kernel's typical rate on HBM3, and the L2
    rule is a rule of thumb (half of the 50 MB L2 holds what the resident programs re-read).
    """

    name: str = "H100 SXM (sm_90), modeled"
    sms: int = 132
    clock_hz: float = 1.98e9
    warp_instructions_per_sm_per_clock: int = 4  # four schedulers, one issue each per clock
    mufu_lanes_per_sm_per_clock: int = 16  # a warp's MUFU instruction takes 2 SM cycles of the SFU
    copy_bandwidth: float = 3.0e12  # bytes/s, read + write counted
    l2_bytes: int = 50 * 2**20  # "50 MB": 52,428,800 bytes, as the device reports its L2
    l2_reuse_bytes: int = 25 * 2**20  # a re-read is an L2 hit when the resident programs load less in between
    registers_per_sm: int = 65536
    register_allocation_unit: int = 256  # registers, per warp
    max_warps_per_sm: int = 64
    max_programs_per_sm: int = 32
    shared_bytes_per_sm: int = 228 * 1024
    shared_reserved_per_program: int = 1024

    def programs_per_sm(self, registers, num_warps, shared_bytes):
        """Resident programs (CTAs) per SM: the tightest of warps, registers and shared memory."""
        per_warp = -(-max(registers, 1) * 32 // self.register_allocation_unit) * self.register_allocation_unit
        by_registers = (self.registers_per_sm // per_warp) // num_warps
        by_warps = self.max_warps_per_sm // num_warps
        by_shared = self.shared_bytes_per_sm // (shared_bytes + self.shared_reserved_per_program)
        return max(0, min(self.max_programs_per_sm, by_registers, by_warps, by_shared))


DEVICE = DeviceModel()

# --- the cases ----------------------------------------------------------------------------

# Targets of issue 10: the modeled bound in % of the floor for bf16 forward + backward
# (``loss.backward()``), 80 for any headline case in float32, and for a ``grad_output`` other
# than 1 (eager or compiled) at most 1.5x the floor's bytes (1.7 with dense sigmoid targets).
# (name, kind, headline shape, scaled-down shape, target). The scaled-down shapes keep what a
# program sees (classes, a row's length, enough positions for a full tile) and cut the count of
# programs; the model checks that they launch the same kernels with the same constexprs.
SEG_A = ("seg (16,150,512,512)", "softmax", (16, 150, 512, 512), (1, 150, 64, 64), 60)
SEG_B = ("seg (8,19,512,1024)", "softmax", (8, 19, 512, 1024), (1, 19, 64, 128), 85)
VOCAB = ("vocab (8192,128256)", "softmax", (8192, 128256), (4, 128256), 80)
DET_INDEX = ("det (1.6M,80) index", "sigmoid_index", (1_600_000, 80), (4096, 80), 85)
DET_DENSE = ("det (1.6M,80) dense", "sigmoid_dense", (1_600_000, 80), (4096, 80), 85)
FP32_TARGET = 80
SMOOTHING_TARGET = 50
TRAFFIC_LIMIT, TRAFFIC_LIMIT_DENSE = 1.5, 1.7


@dataclasses.dataclass
class Case:
    family: str  # the headline case's name
    kind: str  # softmax, sigmoid_index, sigmoid_dense
    shape: tuple
    small_shape: tuple
    dtype: str  # bf16, fp32
    options: str = ""  # "", "label_smoothing 0.1", "per-class gamma/alpha/weight"
    grad_output: float = 1.0
    compiled: bool = False
    target_pct_of_floor: object = None
    target_bytes_over_floor: object = None
    headline: bool = False  # one of the issue's bf16 loss.backward() targets

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
        for options, bf16_target in variants:
            for dtype in ("bf16", "fp32"):
                fp32_target = FP32_TARGET if not options else SMOOTHING_TARGET
                cases.append(Case(family, kind, shape, small, dtype, options,
                                  target_pct_of_floor=bf16_target if dtype == "bf16" else fp32_target,
                                  headline=dtype == "bf16"))
    for family, kind, shape, small, _ in (SEG_A, DET_INDEX):
        cases.append(Case(family, kind, shape, small, "bf16", "per-class gamma/alpha/weight"))
    for family, kind, shape, small, _ in (SEG_A, SEG_B, VOCAB, DET_INDEX, DET_DENSE):
        limit = TRAFFIC_LIMIT_DENSE if kind == "sigmoid_dense" else TRAFFIC_LIMIT
        for compiled in (False, True):
            cases.append(Case(family, kind, shape, small, "bf16", grad_output=2.0, compiled=compiled,
                              target_bytes_over_floor=limit))
    return cases


# --- capture and count under the interpreter ---------------------------------------------


def _interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1", "perf.model runs the kernels under TRITON_INTERPRET=1"
    from triton.runtime import interpreter

    return interpreter


@dataclasses.dataclass
class Launch:
    """One kernel launch: what the JIT needs to compile it, and what the interpreter counted."""

    module: str
    qualname: str
    file: str
    grid: tuple
    args: list  # (name, value) in the kernel's parameter order; tensors as ("tensor", dtype, address)
    constexpr_names: list
    options: dict  # num_warps, num_stages, ...
    source_hash: str  # of every source file the kernel can call into
    source_files: list
    # counted in a scaled-down run (empty at the headline shape)
    store_bytes: int = 0
    load_first_bytes: int = 0  # first touch of an address in this launch
    reread_same_program: list = dataclasses.field(default_factory=list)  # [(bytes loaded in between, bytes)]
    reread_other_program_bytes: int = 0
    shared_footprint_bytes: int = 0  # addresses loaded by more than one program
    trips: dict = dataclasses.field(default_factory=dict)  # (file, line) -> [(trip count, step), ...]
    coverage: dict = dataclasses.field(default_factory=dict)  # (file, line) -> programs that ran it

    @property
    def programs(self):
        return math.prod(self.grid)

    def constexprs(self):
        return {k: v for k, v in self.args if k in self.constexpr_names}

    def signature(self):
        """What must match between the headline and the scaled-down launch."""
        consts = tuple((k, repr(v)) for k, v in self.constexprs().items())
        return (self.qualname, consts, tuple(sorted(self.options.items())))


class _Recorder:
    """The interpreter patches' state: one launch is counted at a time, program by program."""

    mode = "off"  # "capture": record, do not execute; "count": record and execute, counting
    launches = []
    current = None
    kernel_files = set()
    program = 0
    lines = set()
    loads = []  # (program, sequence, addresses, itemsize, bytes loaded by the program before)
    loaded_by_program = Counter()
    counting_graphs = False


@functools.lru_cache(maxsize=None)
def _real(path):
    return os.path.realpath(path)


def _reachable_kernel_globals(fn):
    """The globals dicts and files of a kernel and every @triton.jit function it can call."""
    interp = _interpreter()
    seen, todo, out = set(), [fn], []
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        out.append((f.__globals__, _real(f.__code__.co_filename)))
        for value in list(f.__globals__.values()):
            if isinstance(value, interp.InterpretedFunction):
                todo.append(value.fn)
    return out


def _counting_range(*args):
    """``range`` for the kernels' modules while a launch is counted: records each loop's trips
    at the line of its ``for`` (the interpreter maps ``tl.range`` to ``range`` too)."""
    trips = builtins.range(*args)
    frame = sys._getframe(1)
    if frame.f_code.co_name == "_new_range":  # tl.range / tl.static_range under the interpreter
        frame = frame.f_back
    current = _Recorder.current
    if current is not None:
        where = (_real(frame.f_code.co_filename), frame.f_lineno)
        if where[0] in _Recorder.kernel_files:
            current.trips.setdefault(where, []).append((len(trips), trips.step))
    return trips


def _trace_lines(frame, event, arg):
    """``sys.settrace`` hook: the source lines of kernel code the current program executes."""
    if _real(frame.f_code.co_filename) not in _Recorder.kernel_files:
        return None

    def local(frame, event, arg):
        if event == "line":
            _Recorder.lines.add((_real(frame.f_code.co_filename), frame.f_lineno))
        return local

    return local


def _flush_program():
    current = _Recorder.current
    for where in _Recorder.lines:
        current.coverage[where] = current.coverage.get(where, 0) + 1
    _Recorder.lines = set()


def _summarize_loads(launch):
    """Split a launch's loaded bytes into first touches and re-reads (same program: with the
    bytes that program loaded in between; other programs: with the shared footprint)."""
    import numpy as np

    if not _Recorder.loads:
        return
    addresses = np.concatenate([r[2] for r in _Recorder.loads])
    sizes = np.concatenate([np.full(len(r[2]), r[3], dtype=np.int64) for r in _Recorder.loads])
    programs = np.concatenate([np.full(len(r[2]), r[0], dtype=np.int64) for r in _Recorder.loads])
    order = np.concatenate([np.full(len(r[2]), r[1], dtype=np.int64) for r in _Recorder.loads])
    before = np.concatenate([np.full(len(r[2]), r[4], dtype=np.int64) for r in _Recorder.loads])
    idx = np.lexsort((order, addresses))
    addresses, sizes, programs, before = addresses[idx], sizes[idx], programs[idx], before[idx]
    repeat = np.zeros(len(addresses), dtype=bool)
    repeat[1:] = addresses[1:] == addresses[:-1]
    launch.load_first_bytes = int(sizes[~repeat].sum())
    same = np.zeros_like(repeat)
    same[1:] = repeat[1:] & (programs[1:] == programs[:-1])
    distance = np.zeros(len(addresses), dtype=np.int64)
    distance[1:] = before[1:] - before[:-1]
    if same.any():
        values, inverse = np.unique(distance[same], return_inverse=True)
        weights = np.bincount(inverse, weights=sizes[same])
        launch.reread_same_program = [(int(v), int(w)) for v, w in zip(values, weights)]
    other = repeat & ~same
    launch.reread_other_program_bytes = int(sizes[other].sum())
    # addresses loaded by more than one program
    starts = np.flatnonzero(~repeat)
    lo = np.minimum.reduceat(programs, starts)
    hi = np.maximum.reduceat(programs, starts)
    launch.shared_footprint_bytes = int(sizes[starts][lo != hi].sum())
    _Recorder.loads = []
    _Recorder.loaded_by_program = Counter()


def _count_load(ptrs, mask):
    import numpy as np

    size = ptrs.get_element_ty().primitive_bitwidth // 8
    m = np.broadcast_to(mask.data, ptrs.data.shape) if mask is not None else np.ones(ptrs.data.shape, dtype=bool)
    addresses = np.asarray(ptrs.data)[m].astype(np.uint64).ravel()
    program = _Recorder.program
    _Recorder.loads.append((program, len(_Recorder.loads), addresses, size, _Recorder.loaded_by_program[program]))
    _Recorder.loaded_by_program[program] += size * len(addresses)


def _count_store(ptrs, mask):
    import numpy as np

    size = ptrs.get_element_ty().primitive_bitwidth // 8
    lanes = int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape))) if mask is not None else ptrs.data.size
    _Recorder.current.store_bytes += lanes * size


def _describe_launch(kernel, args, kwargs, grid):
    import torch

    fn = kernel.fn
    params = list(inspect.signature(fn).parameters)
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    options = {k: v for k, v in kwargs.items() if k not in params}
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}
    described = []
    for name in params:
        value = bound.get(name, defaults.get(name))
        if isinstance(value, torch.Tensor):
            value = ("tensor", str(value.dtype).replace("torch.", ""), value.data_ptr())
        described.append((name, value))
    if callable(grid):
        grid = grid(bound)
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    constexpr_names = [k for k, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)]
    files = sorted({path for _, path in _reachable_kernel_globals(fn)})
    return Launch(fn.__module__, fn.__qualname__, _real(fn.__code__.co_filename), grid, described, constexpr_names,
                  options, _hash_sources(files), files)


def _hash_sources(files):
    digest = hashlib.sha1()
    for path in files:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def install_recorder():
    """Patch the interpreter once: launches are recorded, and counted or skipped by mode."""
    interp = _interpreter()
    if getattr(interp, "_perf_model_installed", False):
        return
    interp._perf_model_installed = True
    run = interp.InterpretedFunction.run
    load, store = interp.InterpreterBuilder.create_masked_load, interp.InterpreterBuilder.create_masked_store
    rmw, cas = interp.InterpreterBuilder.create_atomic_rmw, interp.InterpreterBuilder.create_atomic_cas
    set_grid_idx = interp.InterpreterBuilder.set_grid_idx

    def patched_run(self, *args, grid, warmup, **kwargs):
        if warmup or _Recorder.mode == "off" or _Recorder.current is not None:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        launch = _describe_launch(self, args, kwargs, grid)
        _Recorder.launches.append(launch)
        if _Recorder.mode == "capture":
            return None
        reachable = _reachable_kernel_globals(self.fn)
        _Recorder.kernel_files = {f for _, f in reachable}
        shadowed = [g for g, _ in reachable if "range" not in g] + [interp.__dict__]
        for g in shadowed:
            g["range"] = _counting_range
        _Recorder.current, _Recorder.program, _Recorder.lines = launch, 0, set()
        sys.settrace(_trace_lines)
        try:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            sys.settrace(None)
            _flush_program()
            for g in shadowed:
                g.pop("range", None)
            _summarize_loads(launch)
            _Recorder.current = None

    def patched_set_grid_idx(self, x, y, z):
        if _Recorder.current is not None:
            _flush_program()
            gx, gy, _ = _Recorder.current.grid
            _Recorder.program = x * gy * _Recorder.current.grid[2] + y * _Recorder.current.grid[2] + z
        return set_grid_idx(self, x, y, z)

    def patched_load(self, ptrs, mask, other, cache_policy, is_volatile):
        if _Recorder.current is not None:
            _count_load(ptrs, mask)
        return load(self, ptrs, mask, other, cache_policy, is_volatile)

    def patched_store(self, ptrs, value, mask, cache_policy):
        if _Recorder.current is not None:
            _count_store(ptrs, mask)
        return store(self, ptrs, value, mask, cache_policy)

    def patched_rmw(self, rmwOp, ptr, val, mask, sem, scope):
        if _Recorder.current is not None:  # an atomic reads and writes its lanes (at the L2)
            _count_load(ptr, mask)
            _count_store(ptr, mask)
        return rmw(self, rmwOp, ptr, val, mask, sem, scope)

    def patched_cas(self, ptr, cmp, val, sem, scope):
        if _Recorder.current is not None:
            _count_load(ptr, None)
            _count_store(ptr, None)
        return cas(self, ptr, cmp, val, sem, scope)

    interp.InterpretedFunction.run = patched_run
    interp.InterpreterBuilder.set_grid_idx = patched_set_grid_idx
    interp.InterpreterBuilder.create_masked_load = patched_load
    interp.InterpreterBuilder.create_masked_store = patched_store
    interp.InterpreterBuilder.create_atomic_rmw = patched_rmw
    interp.InterpreterBuilder.create_atomic_cas = patched_cas


# aten ops that move no data: views, allocations without a fill, metadata.
_FREE_OPS = {
    "view", "_unsafe_view", "expand", "as_strided", "t", "permute", "unsqueeze", "squeeze", "select", "slice",
    "detach", "alias", "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "lift_fresh",
    "split", "unbind", "transpose", "reshape", "_local_scalar_dense", "is_nonzero", "sym_size", "sym_stride",
    "sym_numel", "_to_copy_noop", "set_", "resize_", "_reshape_alias", "unsafe_view",
}


def _torch_op_counter(totals):
    """A dispatch mode adding each aten op's bytes (inputs read, outputs written) to ``totals``.

    Ops while a kernel runs are the interpreter's host copies, and argument checks (modules named
    ``*validation*``) read values only on the CPU: neither is counted. A ``triton_focal`` custom
    op's Python body runs with the mode on, so the torch ops inside it count.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def nbytes(t):
        return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())  # stride 0 reads its storage

    def in_validation():
        frame = sys._getframe(3)
        while frame is not None:
            if "validation" in frame.f_globals.get("__name__", ""):
                return True
            frame = frame.f_back
        return False

    class TorchOpBytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == "triton_focal":
                from torch._library.custom_ops import OPDEFS

                with TorchOpBytes():
                    return OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
            out = func(*args, **kwargs)
            name = func.__name__.split(".")[0]
            if _Recorder.current is None and name not in _FREE_OPS and not in_validation():
                leaves = torch.utils._pytree.tree_leaves
                read = sum(nbytes(a) for a in leaves((args, kwargs)) if isinstance(a, torch.Tensor))
                written = sum(nbytes(o) for o in leaves(out) if isinstance(o, torch.Tensor))
                totals[name] = totals.get(name, 0) + read + written
            return out

    return TorchOpBytes()


def _counting_aot_backend(totals):
    """A ``torch.compile`` backend: AOTAutograd's forward and backward graphs, run op by op
    (as ``aot_eager`` does) with the dispatch mode counting, while ``_Recorder.counting_graphs``.
    The counts are those of the unfused aten ops Inductor would receive: an upper bound where
    Inductor fuses pointwise ops."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def compiler(gm, example_inputs):
        def run(*args):
            if not _Recorder.counting_graphs:
                return gm(*args)
            with _torch_op_counter(totals):
                return gm(*args)

        return make_boxed_func(run)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def _inputs(case, shape, headline):
    """Logits, targets and keyword arguments. At the headline shape the kernels are not executed,
    so the logits are left uninitialized (the pages are never touched)."""
    import torch

    g = torch.Generator().manual_seed(0)
    dtype = _dtype(case.dtype)
    x = torch.empty(shape, dtype=dtype) if headline else torch.randn(shape, generator=g).to(dtype)
    x.requires_grad_(True)
    classes = shape[1]
    per_class = case.options == "per-class gamma/alpha/weight"
    if case.kind == "softmax":
        target = torch.randint(0, classes, (shape[0],) + tuple(shape[2:]), generator=g)
        kwargs = {"gamma": 2.0, "reduction": "mean"}
        if case.options == "label_smoothing 0.1":
            kwargs["label_smoothing"] = 0.1
        if per_class:
            kwargs.update(gamma=torch.rand(classes, generator=g) + 1.5, alpha=torch.rand(classes, generator=g) + 0.5,
                          weight=torch.rand(classes, generator=g) + 0.5)
    else:
        if case.kind == "sigmoid_index":
            target = torch.randint(0, classes + 1, (shape[0],), generator=g)  # classes: background
        else:
            target = torch.zeros(shape, dtype=dtype) if headline else (torch.rand(shape, generator=g) < 0.01).to(dtype)
        kwargs = {"alpha": 0.25, "gamma": 2.0, "reduction": "sum", "normalizer": 100.0}
        if per_class:
            kwargs.update(gamma=torch.rand(classes, generator=g) + 1.5, weight=torch.rand(classes, generator=g) + 0.5)
    return x, target, kwargs


def _loss_fn(case):
    import triton_focal

    if case.kind == "softmax":
        return lambda x, t, kw: triton_focal.focal_loss(x, t, backend="triton", **kw)
    return lambda x, t, kw: triton_focal.sigmoid_focal_loss(x, t, backend="triton", **kw)


def run_case(case, headline):
    """Forward + backward through the public API; returns (launches, torch-op bytes by op)."""
    import torch

    shape = case.shape if headline else case.small_shape
    x, target, kwargs = _inputs(case, shape, headline)
    loss_fn = _loss_fn(case)
    torch_bytes = {}
    if case.compiled:
        torch._dynamo.reset()
        compiled = torch.compile(lambda x, t: loss_fn(x, t, kwargs), fullgraph=True, dynamic=False,
                                 backend=_counting_aot_backend(torch_bytes))
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
    return _Recorder.launches, torch_bytes, floor, x.numel()


# --- compile and read the machine code (a subprocess without the interpreter) -------------


@contextlib.contextmanager
def recording(mode="count"):
    """Launches inside the block are recorded into the yielded list: executed and counted
    (``"count"``) or only captured (``"capture"``)."""
    install_recorder()
    _Recorder.launches = launches = []
    _Recorder.mode = mode
    try:
        yield launches
    finally:
        _Recorder.mode = "off"


def spec_key(launch):
    import triton

    # the paths too: the line info names them, and the model matches it with the interpreter's
    parts = [launch.module, launch.qualname, launch.source_hash, launch.source_files, triton.__version__]
    for name, value in launch.args:
        if isinstance(value, tuple) and value and value[0] == "tensor":
            value = ("tensor", value[1], value[2] % 16 == 0)
        parts.append((name, repr(value)))
    parts.append(repr(sorted(launch.options.items())))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _portable(value):
    """Constexpr values as picklable data (triton dtypes by name)."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return ("tl.dtype", value.name)
    if isinstance(value, tl.constexpr):
        return _portable(value.value)
    return value


def compile_launches(launches, pythonpath, cache_dir):
    """``{spec key: machine-code summary}`` for every distinct launch, compiled for sm_90."""
    os.makedirs(cache_dir, exist_ok=True)
    specs = {}
    for launch in launches:
        key = spec_key(launch)
        cached = os.path.join(cache_dir, key + ".json")
        if key in specs or os.path.exists(cached):
            continue
        specs[key] = {"module": launch.module, "qualname": launch.qualname, "source_hash": launch.source_hash,
                      "source_files": launch.source_files,
                      "args": [(n, _portable(v)) for n, v in launch.args], "options": launch.options}
    if specs:
        with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as f:
            pickle.dump(specs, f)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        tree = ["--tree", pythonpath] if pythonpath else []
        # A fresh Triton cache: Triton keys its cache by the kernel's source text, so a cached
        # cubin may carry the line info of another checkout (or of the file before an edit above
        # the kernel), and the model reads loops through that line info.
        with tempfile.TemporaryDirectory() as triton_cache:
            env["TRITON_CACHE_DIR"] = triton_cache
            done = subprocess.run([sys.executable, "-m", "perf.model", "--compile-worker", f.name, cache_dir] + tree,
                                  env=env, capture_output=True, text=True, cwd=_REPO)
        os.unlink(f.name)
        if done.returncode != 0:
            raise RuntimeError("compiling for sm_90 failed:\n" + done.stderr[-4000:])
    out = {}
    for launch in launches:
        key = spec_key(launch)
        with open(os.path.join(cache_dir, key + ".json")) as f:
            out[key] = json.load(f)
    return out


def _compile_worker(spec_path, cache_dir):
    import importlib
    import warnings

    import torch
    import triton.language as tl

    from perf import sass

    warnings.filterwarnings("ignore")
    sass.install_stand_in_driver()
    with open(spec_path, "rb") as f:
        specs = pickle.load(f)
    for key, spec in specs.items():
        fn = importlib.import_module(spec["module"])
        for part in spec["qualname"].split("."):
            fn = getattr(fn, part)
        args, kwargs = [], dict(spec["options"])
        for name, value in spec["args"]:
            if isinstance(value, tuple) and value and value[0] == "tensor":
                value = sass.PointerArgument(getattr(torch, value[1]), value[2])
            elif isinstance(value, tuple) and value and value[0] == "tl.dtype":
                value = tl.dtype(value[1])
            args.append(value)
        kernel = sass.compile_sm90(fn, args, kwargs)
        if _hash_sources(spec["source_files"]) != spec["source_hash"]:
            raise RuntimeError(f"{spec['qualname']}: its source files changed while the model ran; run it again")
        code = sass.read_sass(kernel.asm["cubin"])
        summary = {
            "registers": code.registers, "local_bytes": code.local_bytes, "spill_instructions": code.spill_instructions,
            "shared_bytes": int(kernel.metadata.shared) + code.static_shared,
            "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages,
            "instructions": [[ins.opcode, [list(loc) for loc in ins.locations], code.reachable[i],
                              ins.text if ins.base_opcode in _COUNTER_OPCODES else ""]
                             for i, ins in enumerate(code.instructions)],
            "loops": [[loop.first, loop.last, loop.parent] for loop in code.loops],
        }
        with open(os.path.join(cache_dir, key + ".json"), "w") as f:
            json.dump(summary, f)


# --- dynamic instruction counts: SASS loops x measured trips ---------------------------

_COUNTER_OPCODES = {"IADD3", "VIADD", "UIADD3", "IADD", "IADD32I"}  # where a loop counter steps


@dataclasses.dataclass
class SourceLoop:
    file: str
    first: int
    last: int
    header: int  # the line of the ``for`` (and its iterator)
    header_last: int


def _source_structure(files):
    """``for`` loops and function-definition lines of the kernel source files."""
    loops, def_lines = [], set()
    for path in files:
        try:
            tree = ast.parse(open(path).read())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While)):
                header_last = (node.iter if isinstance(node, ast.For) else node.test).end_lineno
                loops.append(SourceLoop(path, node.lineno, node.end_lineno, node.lineno, header_last))
            elif isinstance(node, ast.FunctionDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                body_first = node.body[0].lineno
                def_lines.update((path, line) for line in range(first, body_first))
    return loops, def_lines


def _innermost_source_loop(locations, source_loops):
    best = None
    for file, line in locations:
        for k, loop in enumerate(source_loops):
            if loop.file == _real(file) and loop.first <= line <= loop.last:
                if best is None or loop.last - loop.first < source_loops[best].last - source_loops[best].first:
                    best = k
    return best


def _immediates(text):
    values = []
    for token in text.replace(",", " ").split():
        if token.startswith("0x"):
            try:
                values.append(int(token, 16))
            except ValueError:
                pass
    return values


@dataclasses.dataclass
class DynamicCounts:
    """Warp instructions executed by a launch; ``outside_loops_*``: the part outside every SASS
    loop (once per program, or less), which grows with the grid rather than with the work."""

    warp_instructions: float
    mufu: float
    outside_loops_warp_instructions: float
    outside_loops_mufu: float
    loops: list


def dynamic_counts(code, launch):
    """Warp instructions and MUFU instructions executed by all programs of ``launch`` (one warp's
    instruction stream times ``num_warps``), and the loops with their trips.

    Weights, from the SASS and the interpreter's counts of the same launch:
    * in a SASS loop mapped (by line info) to a source loop: the loop's iterations, i.e. the
      sum over its entries of ``trips // unroll`` (ptxas's unroll factor is the loop counter's
      increment over the source step);
    * code of a loop's lines outside its SASS loop: once per entry before it (preheader); after
      an unrolled loop, ``(trips % unroll) / (unroll - 1)`` per entry (ptxas's remainder copies);
    * elsewhere: the number of programs that executed any of the block's source lines (early
      exits and runtime branches), every program for code of no line.
    A runtime branch inside a loop is counted as taken.
    """
    instructions = code["instructions"]
    files = {_real(loc[0]) for ins in instructions for loc in ins[1]} | {launch.file}
    source_loops, def_lines = _source_structure(sorted(files))
    # trips recorded at a ``range`` call belong to the loop whose header holds that line
    trips_by_loop = defaultdict(list)
    for (file, line), calls in launch.trips.items():
        matches = [k for k, loop in enumerate(source_loops) if loop.file == file and loop.header <= line <= loop.header_last]
        if matches:
            k = min(matches, key=lambda k: source_loops[k].last - source_loops[k].first)
            trips_by_loop[k].extend(calls)
    sass_loops = code["loops"]
    owner = [None] * len(instructions)  # innermost SASS loop of each instruction
    for k, (first, last, _) in enumerate(sass_loops):
        for i in range(first, last + 1):
            if owner[i] is None or (sass_loops[owner[i]][1] - sass_loops[owner[i]][0]) > last - first:
                owner[i] = k
    assoc = [_innermost_source_loop(ins[1], source_loops) for ins in instructions]
    # Map each SASS loop to a source loop: the one whose header line its backward branch carries
    # (Triton attributes the loop's compare-and-branch to the ``for``), else the one most of its own
    # instructions come from; an enclosing SASS loop maps to an enclosing source loop.
    def header_of(locations):
        for file, line in locations:
            hits = [k for k, loop in enumerate(source_loops)
                    if loop.file == _real(file) and loop.header <= line <= loop.header_last]
            if hits:
                return min(hits, key=lambda k: source_loops[k].last - source_loops[k].first)
        return None

    def encloses(outer, inner):
        a, b = source_loops[outer], source_loops[inner]
        return outer != inner and a.file == b.file and a.first <= b.first and b.last <= a.last

    own_votes = [Counter(assoc[i] for i in range(len(instructions)) if owner[i] == k and assoc[i] is not None)
                 for k in range(len(sass_loops))]
    mapped = []
    for k, (first, last, _) in enumerate(sass_loops):
        latch = header_of(instructions[last][1])
        mapped.append(latch if latch is not None else
                      own_votes[k].most_common(1)[0][0] if own_votes[k] else None)
    for k in sorted(range(len(sass_loops)), key=lambda k: sass_loops[k][0] - sass_loops[k][1], reverse=True):
        parent = sass_loops[k][2]  # innermost loops first, so a fix propagates outwards
        if parent >= 0 and mapped[k] is not None and mapped[parent] is not None and not encloses(mapped[parent], mapped[k]):
            outer = [s for s in range(len(source_loops)) if encloses(s, mapped[k])]
            if outer:
                voted = [s for s, _ in own_votes[parent].most_common() if s in outer]
                mapped[parent] = voted[0] if voted else min(outer, key=lambda s: source_loops[s].last - source_loops[s].first)
    unroll = []
    for k, source in enumerate(mapped):
        factor = 1
        calls = trips_by_loop.get(source, [])
        steps = {step for _, step in calls}
        if source is not None and len(steps) == 1 and next(iter(steps)) > 0:
            step = next(iter(steps))
            header = source_loops[source]
            candidates = []
            for i in range(len(instructions)):
                opcode, locations, _, text = instructions[i]
                if owner[i] == k and text and any(_real(f) == header.file and header.header <= l <= header.header_last
                                                  for f, l in locations):
                    candidates += [v // step for v in _immediates(text.split(None, 1)[-1]) if v % step == 0 and 0 < v // step <= 64]
            factor = min(candidates) if candidates else 1
        unroll.append(factor)
    # the main SASS loop of a source loop takes trips // unroll; other SASS loops of the same
    # source loop (ptxas's remainder loops) take the rest
    iterations = [0.0] * len(sass_loops)
    main_of = {}
    for k in sorted(range(len(sass_loops)), key=lambda k: (-unroll[k], sass_loops[k][0] - sass_loops[k][1])):
        source = mapped[k]
        calls = trips_by_loop.get(source, [])
        if source is None:
            iterations[k] = None  # resolved below: its parent's count (assumed one trip per entry)
        elif source not in main_of:
            main_of[source] = k
            iterations[k] = float(sum(n // unroll[k] for n, _ in calls))
        else:
            u = unroll[main_of[source]]
            iterations[k] = float(sum(n % u for n, _ in calls)) if u > 1 else 0.0
    programs = launch.programs
    for k in range(len(sass_loops)):  # outer loops first (sorted by start, longest first)
        if iterations[k] is None:
            parent = sass_loops[k][2]
            iterations[k] = iterations[parent] if parent >= 0 else float(programs)

    def source_weight(source, index):
        """Code of a source loop's lines outside its SASS loops: before the loop (preheader)
        once per entry; after an unrolled loop, ptxas's remainder copies of the body, ``trips %
        unroll`` of the ``unroll - 1`` copies per entry (a loop that is not unrolled: its
        epilogue, once per entry)."""
        calls = trips_by_loop.get(source, [])
        main = main_of.get(source)
        if main is not None and unroll[main] > 1 and index > sass_loops[main][1]:
            u = unroll[main]
            return sum(n % u for n, _ in calls) / (u - 1)
        return float(len(calls)) if calls else float(programs)

    # blocks for the plain code: split at branch targets and after control instructions
    leaders = {0}
    for i, ins in enumerate(instructions):
        if ins[0].split(".")[0] in ("BRA", "BRX", "JMP", "EXIT", "RET", "CALL"):
            leaders.add(i + 1)
    for first, _, _ in sass_loops:
        leaders.add(first)
    block_of, block = [], -1
    for i in range(len(instructions)):
        if i in leaders:
            block += 1
        block_of.append(block)
    plain_weight = defaultdict(float)
    has_lines = set()
    for i, (opcode, locations, reachable, _) in enumerate(instructions):
        if not reachable or owner[i] is not None or assoc[i] is not None:
            continue
        for file, line in locations:
            where = (_real(file), line)
            if where in def_lines:
                continue
            has_lines.add(block_of[i])
            plain_weight[block_of[i]] = max(plain_weight[block_of[i]], float(launch.coverage.get(where, 0)))

    total, outside = [0.0, 0.0], [0.0, 0.0]  # (warp instructions, MUFU) of one warp
    for i, (opcode, locations, reachable, _) in enumerate(instructions):
        if not reachable:
            continue
        k, source = owner[i], assoc[i]
        if k is not None:  # inside a SASS loop: once per iteration, whatever line it came from
            weight = iterations[k]
        elif source is not None:  # a loop's line outside its SASS loop (remainder, preheader, epilogue)
            weight = source_weight(source, i)
        else:
            weight = plain_weight[block_of[i]] if block_of[i] in has_lines else float(programs)
        is_mufu = opcode.startswith("MUFU")
        total[0] += weight
        total[1] += weight * is_mufu
        if k is None:
            outside[0] += weight
            outside[1] += weight * is_mufu
    warps = code["num_warps"]
    loops = []
    for k, (first, last, parent) in enumerate(sass_loops):
        source = mapped[k]
        calls = trips_by_loop.get(source, [])
        loops.append({
            "sass_instructions": last - first + 1,
            "source": f"{os.path.basename(source_loops[source].file)}:{source_loops[source].header}" if source is not None else None,
            "unroll": unroll[k],
            "trips_per_entry": (sum(n for n, _ in calls) / len(calls)) if calls else None,
            "iterations_per_program": iterations[k] / programs,
            "parent": parent,
        })
    return DynamicCounts(total[0] * warps, total[1] * warps, outside[0] * warps, outside[1] * warps, loops)


# --- the model ------------------------------------------------------------------------


def dram_load_bytes(launch, resident_programs, device=DEVICE):
    """Loaded bytes that reach DRAM: first touches, plus re-reads the L2 does not keep.

    A program's re-read is an L2 hit when the resident programs together load less than
    ``l2_reuse_bytes`` between the two reads (each loading what this program loaded in between).
    A re-read of an address another program loaded (per-class vectors, scalars) is an L2 hit
    when all such shared addresses fit that budget.
    """
    total = launch.load_first_bytes
    for distance, nbytes in launch.reread_same_program:
        if distance * resident_programs > device.l2_reuse_bytes:
            total += nbytes
    if launch.shared_footprint_bytes > device.l2_reuse_bytes:
        total += launch.reread_other_program_bytes
    return total


def model_case(case, headline_launches, small_launches, torch_bytes, floor_bytes, numel, small_numel, code_by_key,
               device=DEVICE):
    if [l.signature() for l in headline_launches] != [l.signature() for l in small_launches]:
        raise RuntimeError(f"{case.name}: the scaled-down shape {case.small_shape} takes another launch path than "
                           f"{case.shape}: {[l.signature() for l in headline_launches]} vs {[l.signature() for l in small_launches]}")
    scale = numel / small_numel
    clock = device.clock_hz
    launches, total_time = [], 0.0
    instructions = mufu_total = kernel_bytes = 0.0
    spills = registers = 0
    for big, small in zip(headline_launches, small_launches):
        code = code_by_key[spec_key(big)]
        warps = code["num_warps"]
        per_sm = device.programs_per_sm(code["registers"], warps, code["shared_bytes"])
        resident = min(big.programs, device.sms * max(per_sm, 1))
        active_sms = min(device.sms, big.programs)
        # work in loops scales with the elements; code outside loops runs per program
        counts = dynamic_counts(code, small)
        per_program_scale = big.programs / small.programs
        warp_instr = ((counts.warp_instructions - counts.outside_loops_warp_instructions) * scale
                      + counts.outside_loops_warp_instructions * per_program_scale)
        mufu = (counts.mufu - counts.outside_loops_mufu) * scale + counts.outside_loops_mufu * per_program_scale
        loops = counts.loops
        nbytes = (dram_load_bytes(small, resident, device) + small.store_bytes) * scale
        issue_s = warp_instr / (active_sms * device.warp_instructions_per_sm_per_clock * clock)
        mufu_s = mufu * 32 / (active_sms * device.mufu_lanes_per_sm_per_clock * clock)
        bytes_s = nbytes / device.copy_bandwidth
        t = max(issue_s, mufu_s, bytes_s)
        bound = ("issue", "MUFU", "bytes")[[issue_s, mufu_s, bytes_s].index(t)]
        total_time += t
        instructions += warp_instr
        mufu_total += mufu
        kernel_bytes += nbytes
        spills += code["local_bytes"]
        registers = max(registers, code["registers"])
        constexprs = big.constexprs()
        launches.append({
            "kernel": big.qualname, "grid": list(big.grid), "num_warps": warps, "num_stages": code["num_stages"],
            "constexprs": {k: repr(v) if not isinstance(v, (int, float, bool, str, type(None))) else v for k, v in constexprs.items()},
            "registers": code["registers"], "spill_bytes_per_thread": code["local_bytes"],
            "spill_instructions": code["spill_instructions"], "shared_bytes": code["shared_bytes"],
            "programs_per_sm": per_sm, "resident_programs": resident,
            "warp_instructions": warp_instr, "mufu_warp_instructions": mufu,
            "bytes": nbytes, "load_first_bytes": small.load_first_bytes * scale, "store_bytes": small.store_bytes * scale,
            "reread_bytes": (sum(b for _, b in small.reread_same_program) + small.reread_other_program_bytes) * scale,
            "issue_ms": issue_s * 1e3, "mufu_ms": mufu_s * 1e3, "bytes_ms": bytes_s * 1e3, "modeled_ms": t * 1e3,
            "bound": bound, "loops": loops,
        })
        unmeasured = [loop["source"] for loop in loops if loop["trips_per_entry"] is None
                      and (loop["parent"] < 0 or loops[loop["parent"]]["iterations_per_program"] > 0)]
        if unmeasured:
            # a SASS loop whose source loop ran no ``range`` call: its line info and the
            # interpreter's source disagree (or it is a ``while`` loop); its count is a guess
            print(f"perf.model: note: {case.name}: {big.qualname}: SASS loops of {unmeasured} ran no measured trip "
                  "and count as not run (right for a loop behind an untaken runtime branch)", file=sys.stderr)
    torch_total = sum(torch_bytes.values()) * scale
    total_time += torch_total / device.copy_bandwidth
    floor_s = floor_bytes / device.copy_bandwidth
    main = max(launches, key=lambda l: l["modeled_ms"]) if launches else None
    all_bytes = kernel_bytes + torch_total
    return {
        "case": case.name, "family": case.family, "dtype": case.dtype, "options": case.options,
        "grad_output": case.grad_output, "compiled": case.compiled, "headline": case.headline,
        "shape": list(case.shape), "scaled_down_shape": list(case.small_shape), "scale": scale,
        "counted": ("bytes, trips and executed lines counted under the interpreter at scaled_down_shape, "
                    "multiplied by scale (headline / scaled-down logits elements), code outside loops by headline / "
                    "scaled-down programs; launches and machine code from the headline shape"),
        "launch": (f"{main['kernel']} grid {main['grid'][0]}, {main['num_warps']} warps, "
                   + ", ".join(f"{k}={v}" for k, v in main["constexprs"].items() if k.startswith("BLOCK"))) if main else "",
        "registers": registers, "spills": spills,
        "shared_bytes": main["shared_bytes"] if main else None,
        "occupancy_programs_per_sm": main["programs_per_sm"] if main else None,
        "instructions_per_element": instructions * 32 / numel, "mufu_per_element": mufu_total * 32 / numel,
        "kernel_bytes": kernel_bytes, "torch_op_bytes": torch_total,
        "torch_ops": {k: v * scale for k, v in sorted(torch_bytes.items(), key=lambda kv: -kv[1])},
        "floor_bytes": floor_bytes, "bytes_over_floor": all_bytes / floor_bytes,
        "issue_ms": sum(l["issue_ms"] for l in launches), "mufu_ms": sum(l["mufu_ms"] for l in launches),
        "bytes_ms": all_bytes / device.copy_bandwidth * 1e3,
        "floor_ms": floor_s * 1e3, "modeled_ms": total_time * 1e3,
        "modeled_pct_of_floor": 100 * floor_s / total_time if total_time else None,
        "bound": max(launches, key=lambda l: l["modeled_ms"])["bound"] if launches else "bytes",
        "target_pct_of_floor": case.target_pct_of_floor, "target_bytes_over_floor": case.target_bytes_over_floor,
        "launches": launches,
    }


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(_REPO, "perf", "results", "model")


def select(cases, names="", dtypes="", headline_only=False):
    out = []
    for case in cases:
        if names and not any(n in case.family or n in case.kind for n in names.split(",")):
            continue
        if dtypes and case.dtype not in dtypes.split(","):
            continue
        if headline_only and not case.headline:
            continue
        out.append(case)
    return out


def run_model(cases, pythonpath=None, cache_dir=None, log=print):
    """Model ``cases``; returns the list of result objects."""
    install_recorder()
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "perf-model-sass")
    os.makedirs(cache_dir, exist_ok=True)
    runs = []
    for case in cases:
        t0 = time.time()
        big, _, floor, numel = run_case(case, headline=True)
        small, torch_bytes, _, small_numel = run_case(case, headline=False)
        runs.append((case, big, small, torch_bytes, floor, numel, small_numel))
        log(f"  ran {case.name} ({time.time() - t0:.1f} s)")
    t0 = time.time()
    codes = compile_launches([l for run in runs for l in run[1]], pythonpath or "", cache_dir)
    log(f"  compiled {len(set(codes))} kernels for sm_90 ({time.time() - t0:.1f} s)")
    return [model_case(*run, codes) for run in runs]


def markdown(results, before=None, device=DEVICE):
    """The table; with ``before`` results, a column of their % of the floor."""
    before_pct = {r["case"]: r["modeled_pct_of_floor"] for r in before or []}
    head = ("| case | launch | regs | spills | programs/SM | instr/elem | MUFU/elem | bytes/floor | issue ms | "
            "MUFU ms | bytes ms | modeled ms | floor ms | % of floor | target | bound |"
            + (" before |" if before else "") + "\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            + ("---:|" if before else "") + "\n")
    rows = []
    for r in results:
        target = (f">= {r['target_pct_of_floor']}%" if r["target_pct_of_floor"] is not None else
                  f"bytes <= {r['target_bytes_over_floor']}x" if r["target_bytes_over_floor"] is not None else "")
        rows.append(f"| {r['case']} | {r['launch']} | {r['registers']} | {r['spills']} | {r['occupancy_programs_per_sm']} | "
                    f"{r['instructions_per_element']:.0f} | {r['mufu_per_element']:.1f} | {r['bytes_over_floor']:.2f} | "
                    f"{r['issue_ms']:.3f} | {r['mufu_ms']:.3f} | {r['bytes_ms']:.3f} | {r['modeled_ms']:.3f} | "
                    f"{r['floor_ms']:.3f} | {r['modeled_pct_of_floor']:.0f}% | {target} | {r['bound']} |"
                    + (f" {before_pct[r['case']]:.0f}% |" if r["case"] in before_pct else " |" if before else ""))
    note = (f"Modeled, not measured: {device.name}, {device.sms} SMs at {device.clock_hz / 1e9:.2f} GHz, "
            f"{device.warp_instructions_per_sm_per_clock} warp instructions per SM per clock, MUFU "
            f"{device.mufu_lanes_per_sm_per_clock} lanes per SM per clock, {device.copy_bandwidth / 1e12:.1f} TB/s, "
            f"re-reads from L2 when under {device.l2_reuse_bytes / 2**20:.0f} MiB in between. "
            "instr/elem: dynamic SASS warp instructions x 32 / logits elements.\n\n")
    return note + head + "\n".join(rows) + "\n"


README_BEGIN = "<!-- perf.model table: generated by python -m perf.model --write -->"
README_END = "<!-- end of perf.model table -->"


def readme_table(results, before=None):
    """The compact table for the README: the loss.backward() cases, modeled, with the column for
    measured GPU times left to ``perf.sweep``."""
    before_pct = {r["case"]: r["modeled_pct_of_floor"] for r in before or []}
    lines = ["| case (forward + backward) | modeled % of floor | bound | instr/elem | bytes/floor | before | target "
             "| measured on a GPU |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in results:
        if r["grad_output"] != 1 or r["options"] == "per-class gamma/alpha/weight":
            continue
        before = f"{before_pct[r['case']]:.0f}%" if r["case"] in before_pct else ""
        target = f"{r['target_pct_of_floor']}%" if r["target_pct_of_floor"] is not None else ""
        lines.append(f"| {r['case'].replace(', loss.backward()', '')} | {r['modeled_pct_of_floor']:.0f}% | {r['bound']} | "
                     f"{r['instructions_per_element']:.0f} | {r['bytes_over_floor']:.2f} | {before} | {target} | not yet |")
    return "\n".join(lines)


def _update_readme(results, before):
    path = os.path.join(_REPO, "README.md")
    with open(path) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(head + README_BEGIN + "\n" + readme_table(results, before) + "\n" + README_END + tail)
    return True


def plot(after, before, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["case"] for r in after]
    before_pct = {r["case"]: r["modeled_pct_of_floor"] for r in before or []}
    y = range(len(names))
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.5))
    ax.barh([i + 0.2 for i in y], [before_pct.get(n, 0) for n in names], height=0.4, label="before (9ecf09f)", color="#bbbbbb")
    ax.barh([i - 0.2 for i in y], [r["modeled_pct_of_floor"] for r in after], height=0.4, label="now", color="#3b75af")
    for i, r in enumerate(after):
        if r["target_pct_of_floor"] is not None:
            ax.plot([r["target_pct_of_floor"]] * 2, [i - 0.45, i + 0.45], color="#d62728", lw=1.5)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("modeled % of the memory floor (red: target)")
    ax.set_title("perf.model: H100 modeled from sm_90 SASS, no GPU")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _commit_of(package_dir):
    """The commit of the modeled ``triton_focal``, marked when its files differ from it."""
    def git(*args):
        done = subprocess.run(["git", "-C", package_dir, *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--", "."):
        commit += " + uncommitted changes"
    return commit or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="", help="comma-separated parts of case names (seg, vocab, det, ...)")
    ap.add_argument("--dtypes", default="", help="bf16,fp32")
    ap.add_argument("--headline", action="store_true", help="only the bf16 loss.backward() targets")
    ap.add_argument("--tree", help="model the triton_focal of another checkout (e.g. a git worktree)")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--write", action="store_true",
                    help="write model.json, model.md and model.png in perf/results/model/ and the README's table")
    ap.add_argument("--cache", help="directory caching the compiled kernels' summaries")
    ap.add_argument("--compile-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tree:  # before triton_focal is imported; ahead of the working directory
        sys.path.insert(0, os.path.abspath(args.tree))
    if args.compile_worker:
        _compile_worker(*args.compile_worker)
        return
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton

    import triton_focal

    start = time.time()
    cases = select(all_cases(), args.cases, args.dtypes, args.headline)
    print(f"perf.model: {len(cases)} cases, triton_focal from {os.path.dirname(triton_focal.__file__)}", flush=True)
    results = run_model(cases, pythonpath=os.path.abspath(args.tree) if args.tree else None, cache_dir=args.cache)
    elapsed = time.time() - start
    command = "python -m perf.model " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"device_model": dataclasses.asdict(DEVICE), "triton": triton.__version__, "torch": torch.__version__,
            "command": command.strip(), "seconds": round(elapsed, 1),
            "triton_focal_commit": _commit_of(os.path.dirname(triton_focal.__file__))}
    for r in results:
        r.update(meta)
    before_path = os.path.join(DEFAULT_DIR, "before.json")
    writing_before = args.out is not None and os.path.realpath(args.out) == os.path.realpath(before_path)
    before = json.load(open(before_path)) if os.path.exists(before_path) and not writing_before else None
    print(markdown(results, before))
    print(f"perf.model: {elapsed:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if args.write:
        os.makedirs(DEFAULT_DIR, exist_ok=True)
        with open(os.path.join(DEFAULT_DIR, "model.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(DEFAULT_DIR, "model.md"), "w") as f:
            f.write("# perf.model: the kernels' modeled H100 cost (no GPU; a model, not a measurement)\n\n"
                    f"`{meta['command']}` (triton_focal at {meta['triton_focal_commit']}), triton {meta['triton']}, "
                    f"torch {meta['torch']}, {elapsed:.0f} s on this machine. \"before\": `before.json`, the kernels "
                    "at 9ecf09f.\n\n" + markdown(results, before))
        plot(results, before, os.path.join(DEFAULT_DIR, "model.png"))
        _update_readme(results, before)


if __name__ == "__main__":
    main()
