"""Capture and count kernel launches under ``TRITON_INTERPRET=1``.

In ``"capture"`` mode every Triton launch is recorded (kernel, grid, arguments, constexprs,
options) and not executed; in ``"count"`` mode it is executed and counted program by program:
the bytes every load and store moves (masked lanes excluded), the addresses a program re-reads
with the bytes it moved in between (loads and stores: both pass through the L2), the trips of
every ``range`` loop and the source lines it ran. A dispatch mode counts the torch ops around
the kernels: their bytes and how many there are (each is a launch on a GPU).
"""

import builtins
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
import os
import sys
from collections import Counter


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
    reread_same_program: list = dataclasses.field(default_factory=list)  # [(bytes moved in between, bytes)]
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
    moved_by_program = Counter()
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
    _Recorder.moved_by_program = Counter()


def _count_load(ptrs, mask):
    import numpy as np

    size = ptrs.get_element_ty().primitive_bitwidth // 8
    m = np.broadcast_to(mask.data, ptrs.data.shape) if mask is not None else np.ones(ptrs.data.shape, dtype=bool)
    addresses = np.asarray(ptrs.data)[m].astype(np.uint64).ravel()
    program = _Recorder.program
    _Recorder.loads.append((program, len(_Recorder.loads), addresses, size, _Recorder.moved_by_program[program]))
    _Recorder.moved_by_program[program] += size * len(addresses)


def _count_store(ptrs, mask):
    import numpy as np

    size = ptrs.get_element_ty().primitive_bitwidth // 8
    lanes = int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape))) if mask is not None else ptrs.data.size
    _Recorder.current.store_bytes += lanes * size
    _Recorder.moved_by_program[_Recorder.program] += lanes * size  # stores stream through the L2 too


def _describe_launch(kernel, args, kwargs, grid):
    fn = kernel.fn
    params = list(inspect.signature(fn).parameters)
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    options = {k: v for k, v in kwargs.items() if k not in params}
    defaults = {
        k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty
    }
    described = [(name, _describe_value(bound.get(name, defaults.get(name)))) for name in params]
    if callable(grid):
        grid = grid(bound)
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    constexpr_names = [k for k, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)]
    files = sorted({path for _, path in _reachable_kernel_globals(fn)})
    return Launch(
        fn.__module__,
        fn.__qualname__,
        _real(fn.__code__.co_filename),
        grid,
        described,
        constexpr_names,
        options,
        _hash_sources(files),
        files,
    )


def _describe_value(value):
    """A launch argument as data: a tensor as ``("tensor", dtype, address)``, an argument group
    (``triton_focal/kernels/params.py``) as the same group of described fields."""
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype).replace("torch.", ""), value.data_ptr())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_describe_value(v) for v in value))
    return value


def is_tensor_value(value):
    """Whether a described value is a tensor (``_describe_value``)."""
    return type(value) is tuple and len(value) == 3 and value[0] == "tensor"


def tensor_values(value):
    """The described tensors in a described value, argument groups included, in order."""
    found = []
    map_tensors(value, found.append)
    return found


def map_tensors(value, fn):
    """``value`` with each described tensor ``t`` (:func:`is_tensor_value`) replaced by
    ``fn(t)``, inside argument groups too."""
    if is_tensor_value(value):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(v, fn) for v in value))
    return value


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
    "view",
    "_unsafe_view",
    "expand",
    "as_strided",
    "t",
    "permute",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "detach",
    "alias",
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "new_empty_strided",
    "lift_fresh",
    "split",
    "unbind",
    "transpose",
    "reshape",
    "_local_scalar_dense",
    "is_nonzero",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "_to_copy_noop",
    "set_",
    "resize_",
    "_reshape_alias",
    "unsafe_view",
}


def _torch_op_counter(totals):
    """A dispatch mode adding each aten op's bytes (inputs read, outputs written) and calls to
    ``totals[name] = [bytes, calls]``.

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
                entry = totals.setdefault(name, [0, 0])
                entry[0] += read + written
                entry[1] += 1
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


@dataclasses.dataclass
class Workload:
    """What the model times: ``step`` (one timed call), after an untimed ``prepare`` (inputs, or
    the forward before a backward-only phase). ``elements`` is the size the work scales with, the
    same definition at the headline and the scaled-down shape."""

    prepare: object
    step: object
    elements: int
    floor_bytes: int = 0


@dataclasses.dataclass
class Counted:
    """A workload's launches at the headline shape (captured) and at the scaled-down shape
    (counted), and the torch ops of the scaled-down step: ``{name: [bytes, calls]}``."""

    headline: list
    small: list
    torch_ops: dict
    elements: int
    small_elements: int
    floor_bytes: int


def count_workload(make):
    """``make(headline) -> Workload``; captures the headline launches, counts the scaled-down ones.

    At the headline shape nothing executes (``prepare`` too is only captured), so inputs may be
    uninitialized. At the scaled-down shape ``prepare`` runs, then ``step`` is counted.
    """
    install_recorder()
    big = make(True)
    with recording("capture"):
        big.prepare()
    with recording("capture") as headline:
        big.step()
    small = make(False)
    small.prepare()
    torch_ops = {}
    with recording("count") as counted, _torch_op_counter(torch_ops):
        small.step()
    return Counted(
        list(headline), list(counted), torch_ops, big.elements, small.elements, getattr(big, "floor_bytes", 0)
    )
