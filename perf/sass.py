"""A Triton kernel's machine code for sm_90, compiled without a GPU, and what it says statically.

``compile_sm90`` compiles a ``@triton.jit`` function the way the JIT does at a launch (the same
``JITFunction.warmup`` path: argument specialization, pointer alignment, options), with a
stand-in driver whose current target is ``GPUTarget("cuda", 90, 32)``. ptxas, cuobjdump and
nvdisasm ship in the triton wheel, so nothing else is needed. ``read_sass`` turns the cubin into
instructions with their source locations (the whole inlining chain), the reachable code, the
loops (backward branches; nesting by address intervals) and the resource usage.

This module must run in a process without ``TRITON_INTERPRET=1`` (there ``triton.jit`` makes
interpreter objects that the compiler cannot call); ``perf.model`` runs it in a subprocess.
"""

import dataclasses
import os
import re
import subprocess
import tempfile

SM90 = ("cuda", 90, 32)  # backend, compute capability, warp size


def _nvidia_bin(tool):
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def install_stand_in_driver():
    """Make Triton's active driver report an sm_90 GPU, so the JIT compiles for it on a CPU host."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class StandInSM90Driver(DriverBase):
        """Answers what the JIT asks before it compiles; launching is impossible and never asked."""

        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget(*SM90)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("a stand-in driver cannot run kernels")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 0

    driver.set_active(StandInSM90Driver())


class PointerArgument:
    """A tensor argument as the JIT's specializer sees it: a dtype and an address (its alignment
    decides the ``tt.divisibility`` hint)."""

    def __init__(self, dtype, address):
        self.dtype = dtype
        self._address = address

    def data_ptr(self):
        return self._address

    @staticmethod
    def ptr_range():
        return 0


def compile_sm90(fn, args, kwargs):
    """``fn.warmup`` for sm_90: the compiled kernel the JIT would launch with these arguments.

    ``args``/``kwargs`` are the launch's own: tensors replaced by ``PointerArgument``, ints and
    floats as passed (the JIT specializes ints equal to 1 and multiples of 16), constexprs and
    options (``num_warps``, ``num_stages``) as given.
    """
    return fn.warmup(*args, grid=(1,), **kwargs)


@dataclasses.dataclass
class Instruction:
    address: int
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    text: str
    locations: tuple  # ((file, line), ...) innermost first, then the inlined-at call sites
    predicated: bool
    branch_target: object = None  # label name, resolved to an index by read_sass
    target_index: int = -1

    @property
    def base_opcode(self):
        return self.opcode.split(".")[0]


_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*$")
_LOCATION = re.compile(r'File "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")

# Opcodes that move control: an unconditional one ends a path.
_BRANCHES = {"BRA", "BRX", "JMP", "JMX"}
_ENDS = {"EXIT", "RET", "KILL"}


@dataclasses.dataclass
class Loop:
    """Instructions ``first..last`` (indices) repeat: ``last`` branches back to ``first``."""

    first: int
    last: int
    parent: int = -1  # index of the enclosing loop in the list, -1 at top level

    def contains(self, index):
        return self.first <= index <= self.last


@dataclasses.dataclass
class Sass:
    instructions: list
    reachable: list  # bool per instruction: reached from the entry without entering a CALL
    loops: list  # Loop, outermost first
    registers: int
    local_bytes: int  # local memory per thread (spills, stack arrays)
    static_shared: int
    spill_instructions: int  # STL/LDL in the reachable code

    def innermost_loop(self, index):
        """Index of the innermost loop containing instruction ``index``, or -1."""
        best = -1
        for k, loop in enumerate(self.loops):
            if loop.contains(index) and (
                best < 0 or loop.last - loop.first < self.loops[best].last - self.loops[best].first
            ):
                best = k
        return best


def _disassemble(cubin_path):
    out = subprocess.run(
        [_nvidia_bin("nvdisasm"), "--print-line-info-inline", "-c", cubin_path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    instructions, labels = [], {}
    locations, in_location_block = (), False
    for line in out.splitlines():
        stripped = line.strip()
        if stripped.startswith("//##"):
            found = tuple((f, int(n)) for f, n in _LOCATION.findall(stripped))
            # nvdisasm prints an inlined location as one line with its call sites, then the
            # outer location again; keep the longest chain of the block.
            locations = found if not in_location_block or len(found) > len(locations) else locations
            in_location_block = True
            continue
        in_location_block = False
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        text = match.group(2).rstrip(" ;")
        predicated = text.startswith("@")
        body = text.split(None, 1)[1] if predicated else text
        opcode = body.split(None, 1)[0] if body else ""
        target = _BRANCH_TARGET.search(body)
        instructions.append(
            Instruction(
                int(match.group(1), 16), opcode, text, locations, predicated, target.group(1) if target else None
            )
        )
    for ins in instructions:
        if ins.branch_target is not None:
            ins.target_index = labels.get(ins.branch_target, -1)
    return instructions


def _reachable(instructions):
    """Reached from the entry by falling through and branching; a CALL's callee (libdevice
    slow paths, e.g. IEEE division of denormals) is not followed: its cost is not modeled."""
    seen = [False] * len(instructions)
    stack = [0] if instructions else []
    while stack:
        i = stack.pop()
        if i < 0 or i >= len(instructions) or seen[i]:
            continue
        seen[i] = True
        ins = instructions[i]
        op = ins.base_opcode
        if op in _BRANCHES and ins.target_index >= 0:
            stack.append(ins.target_index)
        if (op in _BRANCHES or op in _ENDS) and not ins.predicated:
            continue
        stack.append(i + 1)
    return seen


def _loops(instructions, reachable):
    """Loops from backward branches, merged by header, outermost first, with their parents."""
    by_header = {}
    for i, ins in enumerate(instructions):
        if reachable[i] and ins.base_opcode in _BRANCHES and 0 <= ins.target_index <= i:
            by_header[ins.target_index] = max(by_header.get(ins.target_index, i), i)
    intervals = sorted(by_header.items(), key=lambda fl: (fl[0], -fl[1]))
    # Partly overlapping intervals (irreducible flow) are merged into one loop.
    merged = []
    for first, last in intervals:
        if merged and first <= merged[-1][1] < last:
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    loops = [Loop(first, last) for first, last in sorted(merged, key=lambda fl: (fl[0], -fl[1]))]
    for k, loop in enumerate(loops):
        enclosing = [
            j for j, other in enumerate(loops) if j != k and other.first <= loop.first and loop.last <= other.last
        ]
        loop.parent = min(enclosing, key=lambda j: loops[j].last - loops[j].first, default=-1)
    return loops


def _resource_usage(cubin_path):
    out = subprocess.run(
        [_nvidia_bin("cuobjdump"), "--dump-resource-usage", cubin_path], check=True, capture_output=True, text=True
    ).stdout
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k: int(v) for k, v in usage.items()}


def read_sass(cubin):
    """The cubin's instructions, reachable code, loops and resource usage."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        instructions = _disassemble(path)
        usage = _resource_usage(path)
    reachable = _reachable(instructions)
    spills = sum(1 for i, ins in enumerate(instructions) if reachable[i] and ins.base_opcode in ("STL", "LDL"))
    return Sass(
        instructions,
        reachable,
        _loops(instructions, reachable),
        usage.get("REG", 0),
        usage.get("LOCAL", 0) + usage.get("STACK", 0),
        usage.get("SHARED", 0),
        spills,
    )


# Global loads whose destination registers a later instruction waits for (an atomic that
# returns a value waits the same way); stores do not wait.
_GLOBAL_LOADS = {"LDG", "LD", "ATOMG", "ATOM"}
_REGISTER = re.compile(r"(?<![A-Z])R(\d+)(\.64|\.128)?")


def _registers(operands):
    """Register numbers named in an operand list (``R2.64`` names R2 and R3)."""
    out = set()
    for number, wide in _REGISTER.findall(operands):
        n = int(number)
        out.update(range(n, n + {"": 1, ".64": 2, ".128": 4}[wide]))
    return out


def memory_rounds(code):
    """For each instruction: does it open a dependent round of global memory accesses?

    Loads issued back to back form one round; the first instruction that uses a register a
    pending load writes waits for the round to arrive and closes it, and the next load opens a
    new one. A loop's header and its backward branch close any round (a loop-carried wait), so
    a loop body that loads and then uses what it loaded costs a round per iteration; one that
    ptxas unrolled with its loads hoisted costs a round per unrolled iteration.
    """
    headers = {loop.first for loop in code.loops}
    latches = {loop.last for loop in code.loops}
    opens, pending = [], set()
    for i, ins in enumerate(code.instructions):
        if i in headers:
            pending = set()
        body = ins.text.split(None, 1)[1] if ins.predicated else ins.text
        operands = body.split(None, 1)[1] if " " in body else ""
        named = _registers(operands)
        if pending and named & pending:
            pending = set()
        opened = False
        if ins.base_opcode in _GLOBAL_LOADS and code.reachable[i]:
            first = operands.split(",", 1)[0]
            width = 4 if ".128" in ins.opcode else 2 if ".64" in ins.opcode else 1
            dest = {int(n) + k for n, _ in _REGISTER.findall(first)[:1] for k in range(width)}
            opened = not pending
            pending |= dest or {-1}
        opens.append(opened)
        if i in latches:
            pending = set()
    return opens
