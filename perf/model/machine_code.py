"""Compile every captured launch for sm_90 (a subprocess without the interpreter), read its
SASS, and weight each instruction by how often it runs.

Dynamic counts: each instruction weighted by how often it runs, from the loops found in the SASS
(backward branches), mapped to their source loops through the line info, times the loop's
measured trips (divided by ptxas's unroll factor, read from the loop counter's increment).
Dependent memory rounds: a global load that opens a round (``perf/sass.py``,
``memory_rounds``), weighted the same way.
"""

import ast
import dataclasses
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict

from .capture import _hash_sources, _real, map_tensors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Bumped when what the worker extracts from the SASS changes (the cache is keyed on it).
SUMMARY_VERSION = 2


def spec_key(launch):
    import triton

    # the paths too: the line info names them, and the model matches it with the interpreter's
    parts = [
        launch.module,
        launch.qualname,
        launch.source_hash,
        launch.source_files,
        triton.__version__,
        SUMMARY_VERSION,
    ]
    for name, value in launch.args:
        parts.append((name, repr(map_tensors(value, lambda t: ("tensor", t[1], t[2] % 16 == 0)))))
    parts.append(repr(sorted(launch.options.items())))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def compile_cache_dir(cache_dir, python=None):
    """Where the summaries of kernels compiled by ``python`` live: the spec keys name this
    process's Triton, so another interpreter's compiles get a folder of their own."""
    if python is None:
        return cache_dir
    return os.path.join(cache_dir, "python-" + hashlib.sha1(os.path.realpath(python).encode()).hexdigest()[:12])


def compiler_version(python):
    """The Triton version of another interpreter."""
    done = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{python}: cannot import triton:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def _portable(value):
    """Constexpr values as picklable data (triton dtypes by name)."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return ("tl.dtype", value.name)
    if isinstance(value, tl.constexpr):
        return _portable(value.value)
    return value


def compile_launches(launches, cache_dir, tree=None, extra_paths=(), python=None):
    """``{spec key: machine-code summary}`` for every distinct launch, compiled for sm_90.

    ``python``: the interpreter whose Triton compiles them (another venv's, e.g. the Triton a
    GPU machine runs); its summaries are cached apart (``compile_cache_dir``)."""
    os.makedirs(cache_dir, exist_ok=True)
    specs = {}
    for launch in launches:
        key = spec_key(launch)
        cached = os.path.join(cache_dir, key + ".json")
        if key in specs or os.path.exists(cached):
            continue
        specs[key] = {
            "module": launch.module,
            "qualname": launch.qualname,
            "source_hash": launch.source_hash,
            "source_files": launch.source_files,
            "args": [(n, _portable(v)) for n, v in launch.args],
            "options": launch.options,
        }
    if specs:
        with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as f:
            pickle.dump(specs, f)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, *extra_paths, env.get("PYTHONPATH")]))
        tree = ["--tree", tree] if tree else []
        # A fresh Triton cache: Triton keys its cache by the kernel's source text, so a cached
        # cubin may carry the line info of another checkout (or of the file before an edit above
        # the kernel), and the model reads loops through that line info.
        with tempfile.TemporaryDirectory() as triton_cache:
            env["TRITON_CACHE_DIR"] = triton_cache
            done = subprocess.run(
                [python or sys.executable, "-m", "perf.model", "--compile-worker", f.name, cache_dir] + tree,
                env=env,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
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
            if isinstance(value, tuple) and value and value[0] == "tl.dtype":
                value = tl.dtype(value[1])
            args.append(map_tensors(value, lambda t: sass.PointerArgument(getattr(torch, t[1]), t[2])))
        kernel = sass.compile_sm90(fn, args, kwargs)
        if _hash_sources(spec["source_files"]) != spec["source_hash"]:
            raise RuntimeError(f"{spec['qualname']}: its source files changed while the model ran; run it again")
        code = sass.read_sass(kernel.asm["cubin"])
        summary = {
            "registers": code.registers,
            "local_bytes": code.local_bytes,
            "spill_instructions": code.spill_instructions,
            "shared_bytes": int(kernel.metadata.shared) + code.static_shared,
            "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages,
            "instructions": [
                [
                    ins.opcode,
                    [list(loc) for loc in ins.locations],
                    code.reachable[i],
                    ins.text if ins.base_opcode in _COUNTER_OPCODES else "",
                ]
                for i, ins in enumerate(code.instructions)
            ],
            "loops": [[loop.first, loop.last, loop.parent] for loop in code.loops],
            "round_opens": sass.memory_rounds(code),
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


_CARRY_OUT = re.compile(r"^(@!?U?P\w+\s+)?\S+\s+R\d+,\s*P\d")  # "IADD3 R82, P0, R82, 0x40, RZ": a 64-bit add's low half


def _counter_immediates(opcode, text):
    """The immediates of an instruction that can step a loop counter: not the halves of a 64-bit
    address increment (its low half sets a carry, its high half is ``.X``), which count bytes,
    not iterations (a loop that ptxas turned into a walk of pointers has no counter at all)."""
    if opcode.endswith(".X") or _CARRY_OUT.match(text):
        return []
    return _immediates(text.split(None, 1)[-1])


def _immediates(text):
    values = []
    for token in text.replace(",", " ").split():
        if token.startswith("0x"):
            try:
                values.append(int(token, 16))
            except ValueError:
                pass
    return values


PER_GRID_LOOPS_FILE = os.path.join("triton_focal", "kernels", "reduce.py")


@dataclasses.dataclass
class DynamicCounts:
    """Warp instructions executed by a launch; ``outside_loops_*``: the part outside every SASS
    loop (once per program, or less) and in the loops over the grid, which grows with the grid
    rather than with the work."""

    warp_instructions: float
    mufu: float
    outside_loops_warp_instructions: float
    outside_loops_mufu: float
    loops: list
    rounds: float = 0.0  # dependent memory rounds, summed over programs
    outside_loops_rounds: float = 0.0


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
        matches = [
            k for k, loop in enumerate(source_loops) if loop.file == file and loop.header <= line <= loop.header_last
        ]
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
            hits = [
                k
                for k, loop in enumerate(source_loops)
                if loop.file == _real(file) and loop.header <= line <= loop.header_last
            ]
            if hits:
                return min(hits, key=lambda k: source_loops[k].last - source_loops[k].first)
        return None

    def encloses(outer, inner):
        a, b = source_loops[outer], source_loops[inner]
        return outer != inner and a.file == b.file and a.first <= b.first and b.last <= a.last

    own_votes = [
        Counter(assoc[i] for i in range(len(instructions)) if owner[i] == k and assoc[i] is not None)
        for k in range(len(sass_loops))
    ]
    mapped = []
    for k, (first, last, _) in enumerate(sass_loops):
        latch = header_of(instructions[last][1])
        mapped.append(latch if latch is not None else own_votes[k].most_common(1)[0][0] if own_votes[k] else None)
    for k in sorted(range(len(sass_loops)), key=lambda k: sass_loops[k][0] - sass_loops[k][1], reverse=True):
        parent = sass_loops[k][2]  # innermost loops first, so a fix propagates outwards
        if (
            parent >= 0
            and mapped[k] is not None
            and mapped[parent] is not None
            and not encloses(mapped[parent], mapped[k])
        ):
            outer = [s for s in range(len(source_loops)) if encloses(s, mapped[k])]
            if outer:
                voted = [s for s, _ in own_votes[parent].most_common() if s in outer]
                mapped[parent] = (
                    voted[0] if voted else min(outer, key=lambda s: source_loops[s].last - source_loops[s].first)
                )
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
                if (
                    owner[i] == k
                    and text
                    and any(_real(f) == header.file and header.header <= l <= header.header_last for f, l in locations)
                ):
                    candidates += [
                        v // step for v in _counter_immediates(opcode, text) if v % step == 0 and 0 < v // step <= 64
                    ]
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

    # The last program's sum over every program's partials (kernels/reduce.py) loops over the
    # grid, not over the work: its trips grow with the programs, like the code outside loops.
    per_grid = [
        mapped[k] is not None and source_loops[mapped[k]].file.endswith(PER_GRID_LOOPS_FILE)
        for k in range(len(sass_loops))
    ]
    total, outside = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]  # (warp instructions, MUFU, rounds) of one warp
    round_opens = code.get("round_opens") or [False] * len(instructions)
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
        total[2] += weight * bool(round_opens[i])
        if k is None or per_grid[k]:
            outside[0] += weight
            outside[1] += weight * is_mufu
            outside[2] += weight * bool(round_opens[i])
    warps = code["num_warps"]
    loops = []
    for k, (first, last, parent) in enumerate(sass_loops):
        source = mapped[k]
        calls = trips_by_loop.get(source, [])
        loops.append(
            {
                "sass_instructions": last - first + 1,
                "source": f"{os.path.basename(source_loops[source].file)}:{source_loops[source].header}"
                if source is not None
                else None,
                "unroll": unroll[k],
                "trips_per_entry": (sum(n for n, _ in calls) / len(calls)) if calls else None,
                "iterations_per_program": iterations[k] / programs,
                "parent": parent,
            }
        )
    return DynamicCounts(
        total[0] * warps, total[1] * warps, outside[0] * warps, outside[1] * warps, loops, total[2], outside[2]
    )
