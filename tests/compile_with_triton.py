"""Compile every kernel launch the package makes for real GPU targets, without a GPU, and check
that no 32-bit integer product reaches pointer arithmetic.

The interpreter accepts code the compilers reject, and runs numpy where a GPU would run 32-bit
offsets, so neither a wrong API for one backend nor an offset that overflows at ``2**31``
shows up in the interpreted tests. This script:

1. calls the public API (both losses, every layout and option, the gradient modes, the fused
   linear head and the vocabulary-shard launchers) on small CPU tensors, with each kernel's
   launch replaced by a record of its arguments (nothing runs);
2. compiles every recorded launch with the JIT's own ``warmup`` (its argument specialization,
   alignment hints and options) for each target, with a stand-in driver reporting that target;
3. walks each kernel's TTIR backwards from every ``tt.addptr`` offset and reports any
   ``arith.muli`` on ``i32`` on the way whose operands are not provably small (a product of
   compile-time ranges and constants cannot overflow; one involving a runtime size, stride or
   index can).

Usage::

    python tests/compile_with_triton.py [--targets cuda:80,cuda:90,cuda:100,hip:gfx942]
                                        [--triton-path DIR]

``--triton-path`` (or ``TRITON_FOCAL_TRITON_PATH``) puts another Triton first on ``sys.path``,
e.g. one installed with ``pip install --no-deps --target DIR triton==3.6.0``. Exit status 0
when every launch builds for every target and no 32-bit product is found; the failures are
printed otherwise. It must run without ``TRITON_INTERPRET=1`` (it removes it for itself).
"""

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARGETS = "cuda:80,cuda:90,cuda:100,hip:gfx942"
TRITON_PATH_VAR = "TRITON_FOCAL_TRITON_PATH"


def parse_target(text):
    """``"cuda:90"`` -> ``("cuda", 90, 32)``, ``"hip:gfx942"`` -> ``("hip", "gfx942", 64)``."""
    backend, arch = text.split(":")
    if backend == "cuda":
        return backend, int(arch), 32
    if backend == "hip":
        return backend, arch, 64
    raise ValueError(f"unknown backend in target {text!r}")


# --- the TTIR check ------------------------------------------------------------------------

_VALUE = re.compile(r"%[\w]+(?:#\d+)?")
_LOC_REF = re.compile(r"\s*loc\([^()]*(?:\([^()]*\)[^()]*)*\)\s*$")
_LOC_DEF = re.compile(r'^#(loc\d*)\s*=\s*loc\("([^"]+)":(\d+):(\d+)\)')
_LOC_ALIAS = re.compile(r'^#(loc\d*)\s*=\s*loc\((?:callsite\()?(?:"[^"]*"\()?#(loc\d*)')
_LOC_USE = re.compile(r"loc\(#(loc\d*)\)\s*$")
_INT_CONSTANT = re.compile(r"arith\.constant\s+(?:dense<)?(-?\d+)>?\s*:\s*(?:tensor<[^>]*x)?i(?:1|8|16|32|64)\b")
_RANGE = re.compile(r"tt\.make_range\s*\{end\s*=\s*(\d+)\s*:\s*i32,\s*start\s*=\s*(-?\d+)\s*:\s*i32\}")
_RESULTS = re.compile(r"^(%\w+(?::\d+)?(?:\s*,\s*%\w+(?::\d+)?)*)\s*=\s*(.*)$")
_FOR = re.compile(r"scf\.for\s+(%\w+)\s*=\s*(%\w+)\s+to\s+(%\w+)\s+step\s+(%\w+)(?:\s+iter_args\((.*?)\))?")
INT32_LIMIT = 2**31

# Ops an offset's value passes through unchanged or combined: the walk follows their operands.
_THROUGH = {
    "arith.addi",
    "arith.subi",
    "arith.muli",
    "arith.extsi",
    "arith.extui",
    "arith.select",
    "arith.maxsi",
    "arith.minsi",
    "tt.splat",
    "tt.broadcast",
    "tt.expand_dims",
    "tt.reshape",
    "tt.trans",
    "tt.reduce",
    "tt.join",
    "tt.cat",
}


class Ttir:
    """The def-use graph of one TTIR module: what each SSA value is made from."""

    def __init__(self, text):
        self.defs = {}  # value -> (op name, operands, line)
        self.sources = {}  # block argument or region result -> values it takes (scf.for, scf.if)
        self.addptrs = []  # (offset value, line)
        locs, aliases = {}, {}
        for raw in text.splitlines():
            line = raw.strip()
            found = _LOC_DEF.match(line)
            if found:
                locs[found.group(1)] = f"{os.path.basename(found.group(2))}:{found.group(3)}"
                continue
            found = _LOC_ALIAS.match(line)
            if found:
                aliases[found.group(1)] = found.group(2)
        self._locs, self._aliases = locs, aliases
        self._parse(text)

    def location(self, line):
        found = _LOC_USE.search(line)
        name = found.group(1) if found else None
        for _ in range(32):
            if name is None or name in self._locs:
                break
            name = self._aliases.get(name)
        return self._locs.get(name, "?")

    def _parse(self, text):
        regions = []  # per open region: (op name, results, iter args) of the op that opened it
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or line.startswith("module") or line.startswith("tt.func"):
                continue
            if line.startswith("}"):
                if regions:
                    closed = regions.pop()
                    if line.rstrip().endswith("{"):  # "} else {": the same scf.if goes on
                        regions.append(closed)
                continue
            body = _LOC_REF.sub("", line)
            results, rhs = [], body
            assigned = _RESULTS.match(body)
            if assigned:
                lhs, rhs = assigned.group(1), assigned.group(2)
                for name in (n.strip() for n in lhs.split(",")):
                    if ":" in name:  # %5:2 = ... defines %5#0 and %5#1
                        base, count = name.split(":")
                        results += [f"{base}#{i}" for i in range(int(count))]
                    else:
                        results.append(name)
            op = rhs.split("(")[0].split()[0].strip('"') if rhs.split() else ""
            if op == "scf.yield" and regions:
                opener, opener_results, iter_args = regions[-1]
                for i, value in enumerate(_VALUE.findall(rhs)):
                    if i < len(opener_results):
                        self.sources.setdefault(opener_results[i], []).append(value)
                    if i < len(iter_args):
                        self.sources.setdefault(iter_args[i], []).append(value)
                continue
            iter_args = []
            if op == "scf.for":
                found = _FOR.search(rhs)
                if found and found.group(5):
                    for pair in found.group(5).split(","):
                        arg, init = (s.strip() for s in pair.split("="))
                        iter_args.append(arg)
                        self.sources.setdefault(arg, []).append(init)
                for i, name in enumerate(results):
                    if i < len(iter_args):
                        self.sources.setdefault(name, []).append(iter_args[i])
                operands = []
            else:
                operands = _VALUE.findall(rhs)
            for name in results:
                self.defs[name] = (op, operands, line)
            if results and "#" in results[0]:  # %5 also names %5#0
                self.defs.setdefault(results[0].split("#")[0], (op, operands, line))
            if op == "tt.addptr" and len(operands) >= 2:
                self.addptrs.append((operands[1], line))
            if line.rstrip().endswith("{"):
                regions.append((op, results, iter_args))

    def bound(self, value, depth=0):
        """An upper bound of ``|value|`` from constants and ``tt.make_range`` alone, or None."""
        if depth > 64 or value not in self.defs:
            return None
        op, operands, line = self.defs[value]
        if op == "arith.constant":
            found = _INT_CONSTANT.search(line)
            return abs(int(found.group(1))) if found else None
        if op == "tt.make_range":
            found = _RANGE.search(line)
            return max(abs(int(found.group(1)) - 1), abs(int(found.group(2)))) if found else None
        bounds = [self.bound(v, depth + 1) for v in operands[:2]]
        if op in ("tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "tt.trans", "arith.extsi", "arith.extui"):
            return bounds[0]
        if op in ("arith.remsi", "arith.remui") and bounds[1] is not None:
            return bounds[1] - 1 if bounds[0] is None else min(bounds[0], bounds[1] - 1)
        if op in ("arith.divsi", "arith.divui", "arith.shrsi", "arith.shrui"):
            return bounds[0]
        if op == "arith.andi" and any(b is not None for b in bounds):
            return min(b for b in bounds if b is not None)
        if None in bounds or len(bounds) < 2:
            return None
        if op in ("arith.addi", "arith.subi"):
            return bounds[0] + bounds[1]
        if op == "arith.muli":
            return bounds[0] * bounds[1]
        if op in ("arith.maxsi", "arith.minsi", "arith.select"):
            return max(bounds)
        return None

    def narrow_products_in_offsets(self):
        """``[(location, line)]`` of every i32 ``arith.muli`` that may overflow and whose result
        flows into a ``tt.addptr`` offset."""
        found, seen = {}, set()
        stack = [offset for offset, _ in self.addptrs]
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            stack += self.sources.get(value, [])
            if value not in self.defs:
                continue
            op, operands, line = self.defs[value]
            if op not in _THROUGH:
                continue
            if op == "arith.muli" and _is_i32(line):
                bound = self.bound(value)
                if bound is None or bound >= INT32_LIMIT:
                    found[line] = self.location(line)
            stack += operands
        return sorted((loc, line) for line, loc in found.items())


def _is_i32(line):
    """Whether an op's type (after its last ``:``) is i32 or a tensor of i32."""
    type_text = line.rsplit(" : ", 1)[-1]
    return re.search(r"(?:\bi32\b|xi32>)", type_text) is not None


# --- compiling without a GPU ---------------------------------------------------------------


def install_driver():
    """A stand-in active driver whose target ``set_target`` chooses; every target gets its own
    device number, so the JIT's per-device caches never hand one target's kernel to another."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class StandInDriver(DriverBase):
        target = GPUTarget("cuda", 90, 32)
        device = 0

        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return self.target

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("a stand-in driver cannot run kernels")

        def get_current_device(self):
            return self.device

        def get_current_stream(self, device):
            return 0

    stand_in = StandInDriver()
    targets = {}

    def set_target(target):
        stand_in.target = GPUTarget(*target)
        stand_in.device = targets.setdefault(target, len(targets))

    driver.set_active(stand_in)
    return set_target


class PointerArgument:
    """A tensor as the JIT's specializer sees it: a dtype and an address (its alignment decides
    the ``tt.divisibility`` hint)."""

    def __init__(self, dtype, address):
        self.dtype = dtype
        self._address = address

    def data_ptr(self):
        return self._address

    @staticmethod
    def ptr_range():
        return 0


class RecordInsteadOfLaunch:
    """Stands in for a ``@triton.jit`` kernel in its launcher's module: ``kernel[grid](...)``
    records the call (tensors as dtype and address) and runs nothing."""

    def __init__(self, fn, launches):
        self.fn = fn
        self.launches = launches

    def __getitem__(self, grid):
        import torch

        def launch(*args, **kwargs):
            args = [PointerArgument(a.dtype, a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args]
            self.launches.append((self.fn, args, kwargs))

        return launch


def record_launches():
    """``[(jit function, args, kwargs)]`` of every launch the public API makes in these calls."""
    import torch

    import triton_focal
    from triton_focal import backends
    from triton_focal.ops import (
        denominators,
        distribution_focal,
        inplace_grad,
        sigmoid_focal,
        softmax_focal,
        vocab_shard,
    )

    launches = []
    for module, name in [
        (softmax_focal, "_softmax_focal_kernel"),
        (softmax_focal, "_softmax_focal_one_read_kernel"),
        (sigmoid_focal, "_sigmoid_focal_kernel"),
        (inplace_grad, "_scale_grad_by_scalar_kernel"),
        (denominators, "_target_count_kernel"),
        (vocab_shard, "_shard_stats_kernel"),
        (vocab_shard, "_shard_smoothing_kernel"),
        (vocab_shard, "_shard_grad_kernel"),
        (distribution_focal, "_distribution_focal_kernel"),
    ]:
        setattr(module, name, RecordInsteadOfLaunch(getattr(module, name), launches))
    # The Triton backend on CPU tensors outside the interpreter: nothing is launched here.
    why_not = backends._why_not
    backends._why_not = lambda name, device: None if name == "triton" else why_not(name, device)

    def leaf(*shape, dtype=torch.float32, channels_last=False):
        x = torch.randn(*shape).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        return x.requires_grad_()

    def backward(loss, grad_output=None):
        loss.backward(grad_output if grad_output is not None else torch.ones_like(loss))

    torch.manual_seed(0)
    # Softmax: channels-first, rows (short and vocabulary-long), channels_last, float64.
    x = leaf(2, 19, 8, 8, dtype=torch.bfloat16)
    t = torch.randint(0, 19, (2, 8, 8))
    backward(triton_focal.focal_loss(x, t, backend="triton"))  # forward may store; backward skips
    backward(triton_focal.focal_loss(x, t, gamma=0.0, backend="triton"), torch.tensor(2.0))
    x = leaf(8, 4000, dtype=torch.float16)
    t = torch.randint(0, 4000, (8,))
    c = torch.rand(4000)
    loss = triton_focal.focal_loss(
        x,
        t,
        gamma=c,
        alpha=c,
        weight=c,
        reduction="none",
        label_smoothing=0.1,
        z_loss=1e-4,
        softcap=30.0,
        backend="triton",
    )
    backward(loss)
    backward(
        triton_focal.focal_loss(leaf(2, 40000), torch.tensor([3, -100]), gamma=1.5, backend="triton"), torch.tensor(0.5)
    )
    triton_focal.focal_loss(
        torch.randn(64, 10), torch.randint(0, 10, (64,)), gamma=0.5, reduction="sum", backend="triton"
    )
    x = leaf(2, 19, 4, 4, channels_last=True)
    backward(
        triton_focal.focal_loss(x, torch.randint(0, 19, (2, 4, 4)), alpha=0.25, label_smoothing=0.2, backend="triton")
    )
    x = leaf(2, 7, 4, 4, dtype=torch.float64)
    backward(
        triton_focal.focal_loss(x, torch.randint(0, 7, (2, 4, 4)), label_smoothing=0.2, z_loss=1e-3, backend="triton")
    )
    # A transposed (T, V) view: classes strided by T.
    x = leaf(300, 6)
    backward(triton_focal.focal_loss(x.t(), torch.randint(0, 300, (6,)), backend="triton"), torch.tensor(2.0))
    # Many classes strided: the forward saves per-row statistics, a rescaled backward reads them.
    x = leaf(1, 64, 32, 32, dtype=torch.bfloat16)
    backward(triton_focal.focal_loss(x, torch.randint(0, 64, (1, 32, 32)), backend="triton"), torch.tensor(3.0))
    # The gradient written into the logits, then rescaled in place.
    for dtype in (torch.bfloat16, torch.float64):
        x = leaf(4, 3, 5, dtype=dtype)
        y = x * 1
        backward(
            triton_focal.focal_loss(y, torch.randint(0, 3, (4, 5)), inplace_grad=True, backend="triton"),
            torch.tensor(2.0),
        )

    # Sigmoid: class indices (rows and channels-first), dense targets, per-class gamma, FL*.
    x = leaf(64, 80, dtype=torch.bfloat16)
    t = torch.randint(0, 81, (64,))
    t[0] = -100
    w = torch.rand(64, 1).expand(64, 80)
    backward(triton_focal.sigmoid_focal_loss(x, t, weight=w, reduction="mean", backend="triton"))
    backward(triton_focal.sigmoid_focal_loss(x, t, reduction="sum", backend="triton"), torch.tensor(2.0))
    x = leaf(2, 5, 8, 8, dtype=torch.float16)
    backward(
        triton_focal.sigmoid_focal_loss(
            x, torch.rand(2, 5, 8, 8).half(), gamma=torch.rand(5), alpha=-1.0, backend="triton"
        )
    )
    backward(
        triton_focal.sigmoid_focal_loss(
            x, torch.randint(0, 6, (2, 8, 8)), normalizer=torch.tensor(4.0), reduction="sum", backend="triton"
        )
    )
    x = leaf(80, 16)
    backward(triton_focal.sigmoid_focal_loss(x.t(), torch.randint(0, 81, (16,)), reduction="sum", backend="triton"))
    triton_focal.sigmoid_focal_loss_star(
        torch.randn(16, 7), torch.rand(16, 7), alpha=0.25, gamma=1.5, reduction="sum", backend="triton"
    )
    x = leaf(16, 7, dtype=torch.float64)
    backward(
        triton_focal.sigmoid_focal_loss(x, torch.randint(0, 8, (16,)), gamma=0.5, reduction="mean", backend="triton")
    )

    # Distribution focal loss: YOLOv8's (B, A, 4, 16) with a mask, a per-anchor weight and a
    # normalizer tensor (forward may store; backward skips, then rescales); GFL's 17 bins with
    # the expectation (the backward against both cotangents); a weight over many rows; float64.
    x = leaf(2, 8, 4, 16, dtype=torch.bfloat16)
    t = torch.rand(2, 8, 4) * 15
    fg = torch.rand(2, 8, 4) > 0.5
    w = torch.rand(2, 8, 1)
    for grad_output in (None, torch.tensor(2.0)):
        loss = triton_focal.distribution_focal_loss(
            x, t, mask=fg, weight=w, reduction="sum", normalizer=torch.tensor(4.0), backend="triton"
        )
        backward(loss, grad_output)
    backward(triton_focal.distribution_focal_loss(x, t, mask=fg, backend="triton"))
    x = leaf(40, 17, dtype=torch.float16)
    loss, expectation = triton_focal.distribution_focal_loss(
        x, torch.rand(40) * 16, weight=torch.rand(40), reduction="none", return_expectation=True, backend="triton"
    )
    (loss.sum() + expectation.sum()).backward()
    x = leaf(2, 8, 4, 16)
    backward(triton_focal.distribution_focal_loss(x, t, weight=torch.rand(2, 1, 1), reduction="sum", backend="triton"))
    x = leaf(8, 4, 16, dtype=torch.float64)
    backward(triton_focal.distribution_focal_loss(x, torch.rand(8, 4) * 15, backend="triton"))

    # The vocabulary-parallel steps, through the fused linear head and the launchers.
    hidden = leaf(6, 16)
    head = leaf(3000, 16)
    t = torch.randint(0, 3000, (6,))
    backward(
        triton_focal.fused_linear_focal_loss(
            hidden,
            head,
            t,
            label_smoothing=0.1,
            softcap=30.0,
            gamma=torch.rand(3000),
            weight=torch.rand(3000),
            backend="triton",
        )
    )
    backward(triton_focal.fused_linear_focal_loss(hidden, head, t, z_loss=1e-4, backend="triton"))
    x = torch.randn(4, 1000, dtype=torch.float64)
    rows = torch.zeros(4, dtype=torch.float64)
    t = torch.tensor([0, -1, 5, 999])
    vocab_shard.shard_softmax_stats(x, t, 30.0)
    vocab_shard.shard_smoothing_sums(x, rows, 30.0, torch.rand(1000, dtype=torch.float64), rows.new_ones(1000))
    for smooth in (None, rows):
        vocab_shard.shard_focal_grad(x, rows, rows, rows, smooth, t, None, 2.0, None)
    x = torch.randn(1000, 4).t()  # classes strided by the rows
    rows = torch.zeros(4)
    vocab_shard.shard_softmax_stats(x, t, None)
    vocab_shard.shard_smoothing_sums(x, rows, None, 2.0, None)
    vocab_shard.shard_focal_grad(x, rows, rows, rows, rows, t, None, 2.0, None)
    return launches


def _describe(args, kwargs):
    flags = {k: v for k, v in kwargs.items() if k.isupper() and v not in (False, 0)}
    dtype = next((a.dtype for a in args if isinstance(a, PointerArgument)), None)
    return f"{str(dtype).replace('torch.', '')} {flags}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=DEFAULT_TARGETS)
    parser.add_argument("--triton-path", default=os.environ.get(TRITON_PATH_VAR))
    options = parser.parse_args(argv)
    # Under the interpreter triton.jit makes objects the compiler cannot call.
    os.environ.pop("TRITON_INTERPRET", None)
    if options.triton_path:
        sys.path.insert(0, os.path.abspath(options.triton_path))
    sys.path.insert(0, ROOT)
    start = time.time()
    import triton

    print(f"triton {triton.__version__} from {os.path.dirname(triton.__file__)}")
    set_target = install_driver()
    launches = record_launches()
    kernels = sorted({fn.__name__ for fn, _, _ in launches})
    print(f"{len(launches)} launches of {len(kernels)} kernels: {', '.join(kernels)}")

    failures = []
    for target_text in options.targets.split(","):
        target = parse_target(target_text)
        set_target(target)
        t0 = time.time()
        checked, built, errors = set(), set(), 0
        for fn, args, kwargs in launches:
            try:
                kernel = fn.warmup(*args, grid=(1,), **kwargs)
            except Exception as error:  # every failure is reported, then the exit status
                errors += 1
                cause = error.__cause__ or error
                message = [m for m in str(cause).strip().splitlines() if m.strip(" ^")]
                failures.append(
                    f"{target_text}: {fn.__name__} {_describe(args, kwargs)} does not build: "
                    f"{type(cause).__name__}: {message[-1] if message else ''}"
                )
                continue
            built.add(kernel.hash)
            if kernel.hash in checked:
                continue
            checked.add(kernel.hash)
            for loc, line in Ttir(kernel.asm["ttir"]).narrow_products_in_offsets():
                failures.append(
                    f"{target_text}: {fn.__name__} {_describe(args, kwargs)}: 32-bit product in a "
                    f"pointer offset at {loc}: {line}"
                )
        print(f"{target_text}: {len(built)} kernels built, {errors} launches failed, {time.time() - t0:.1f} s")
    seen = set()
    for failure in failures:
        if failure not in seen:
            seen.add(failure)
            print("FAIL", failure)
    print(f"{'FAILED' if failures else 'OK'} in {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
