"""The time of a counted workload on the modeled device.

Per Triton launch, with ``P`` programs on ``S = min(SMs, P)`` SMs, ``R`` resident programs per
SM, ``W = ceil(P / (S R))`` waves (the tail counts whole), ``n`` dependent memory rounds per
program, ``I`` warp instructions and ``B`` DRAM bytes per program:

    T = launch_s + max(T_issue, T_mufu, T_bytes, T_serial)
    T_serial = W * (n * round_latency_s + issue_factor * R * I / (schedulers * clock) + R * B / (BW / S))

Loops scale with the elements (headline / scaled-down), code outside loops with the programs;
a persistent launch with one tile per program at both shapes scales its loops with the
programs too (``_one_tile_per_program``).

``T_serial`` is what a wave costs when its programs wait for each round of loads before the
arithmetic that uses it, and issue the next round only after: latency, then the round's
instructions, then the round's bytes at the SM's share of the bandwidth. ``T_issue``, ``T_mufu``
and ``T_bytes`` are the throughput bounds of the uncalibrated model (``modeled_ms``: their
maximum, no launch cost, kept beside the calibrated figure). Each torch op on the path is a
launch too: ``launch_s + bytes / BW``.
"""

from .device import DEVICE
from .machine_code import dynamic_counts, spec_key

L2_OUTCOMES = ("nominal", "hit", "miss")


def _reread_misses(footprint, device, l2):
    """Is a re-read with ``footprint`` bytes moved in between by the resident programs a miss?"""
    if footprint <= device.l2_sure_hit_bytes:
        return False
    if footprint > device.l2_sure_miss_bytes:
        return True
    if l2 == "hit":
        return False
    if l2 == "miss":
        return True
    return footprint > device.l2_reuse_bytes


def dram_load_bytes(launch, resident_programs, device=DEVICE, l2="nominal"):
    """Loaded bytes that reach DRAM: first touches, plus re-reads the L2 does not keep.

    A program's re-read is an L2 hit when the resident programs together move (load and store)
    less than ``l2_reuse_bytes`` between the two reads, each moving what this program moved in
    between. A re-read of an address another program loaded (per-class vectors, scalars) is a hit
    when all such shared addresses fit that budget. ``l2``: ``"nominal"`` applies the boundary;
    ``"hit"`` and ``"miss"`` decide the re-reads between the sure-hit and sure-miss sizes.
    """
    total = launch.load_first_bytes
    for distance, nbytes in launch.reread_same_program:
        if _reread_misses(distance * resident_programs, device, l2):
            total += nbytes
    if _reread_misses(launch.shared_footprint_bytes, device, l2):
        total += launch.reread_other_program_bytes
    return total


def l2_uncertain(launch, resident_programs, device=DEVICE):
    """Does a re-read of this launch fall where the model cannot say hit or miss?"""
    footprints = [d * resident_programs for d, _ in launch.reread_same_program]
    if launch.reread_other_program_bytes:
        footprints.append(launch.shared_footprint_bytes)
    return any(device.l2_sure_hit_bytes < f <= device.l2_sure_miss_bytes for f in footprints)


class LaunchCounts:
    """One Triton launch at the headline shape: the scaled-down counts scaled up."""

    def __init__(self, big, small, code, scale, device=DEVICE):
        self.big, self.small, self.code = big, small, code
        self.warps = code["num_warps"]
        self.per_sm = device.programs_per_sm(code["registers"], self.warps, code["shared_bytes"])
        self.programs = big.programs
        self.active_sms = min(device.sms, self.programs)
        self.resident_per_sm = min(max(self.per_sm, 1), -(-self.programs // self.active_sms))
        self.resident = self.active_sms * self.resident_per_sm
        self.waves = -(-self.programs // self.resident)
        counts = dynamic_counts(code, small)
        self.loops = counts.loops
        # work in loops scales with the elements; code outside loops runs per program
        per_program_scale = big.programs / small.programs
        if _one_tile_per_program(big) and _one_tile_per_program(small):
            # A persistent grid with no more tiles than programs: every program walks one tile
            # at either shape, so its loops run what the scaled-down program's ran (a tile the
            # small shape only partly fills costs the instructions of a full one).
            scale_of_loops = per_program_scale
        else:
            scale_of_loops = scale

        def scaled(total, outside):
            return (total - outside) * scale_of_loops + outside * per_program_scale

        self.warp_instructions = scaled(counts.warp_instructions, counts.outside_loops_warp_instructions)
        self.mufu = scaled(counts.mufu, counts.outside_loops_mufu)
        self.rounds_per_program = scaled(counts.rounds, counts.outside_loops_rounds) / self.programs
        self.store_bytes = small.store_bytes * scale
        self.scale = scale
        self.l2_uncertain = l2_uncertain(small, self.resident, device)

    def bytes(self, device=DEVICE, l2="nominal"):
        return (dram_load_bytes(self.small, self.resident, device, l2) + self.small.store_bytes) * self.scale

    def times(self, device=DEVICE, l2="nominal"):
        """``(issue, mufu, bytes, serial)`` seconds."""
        clock = device.clock_hz
        schedulers = device.warp_instructions_per_sm_per_clock
        nbytes = self.bytes(device, l2)
        issue = self.warp_instructions / (self.active_sms * schedulers * clock)
        mufu = self.mufu * 32 / (self.active_sms * device.mufu_lanes_per_sm_per_clock * clock)
        transfer = nbytes / device.copy_bandwidth
        per_program_instructions = self.warp_instructions / self.programs
        per_program_bytes = nbytes / self.programs
        serial = self.waves * (
            self.rounds_per_program * device.round_latency_s
            + device.issue_factor * self.resident_per_sm * per_program_instructions / (schedulers * clock)
            + self.resident_per_sm * per_program_bytes * self.active_sms / device.copy_bandwidth
        )
        return issue, mufu, transfer, serial

    def calibrated_s(self, device=DEVICE, l2="nominal"):
        return device.launch_s + max(self.times(device, l2))

    def bound(self, device=DEVICE, l2="nominal"):
        times = self.times(device, l2)
        return ("issue", "MUFU", "bytes", "serial")[times.index(max(times))]


def _one_tile_per_program(launch):
    """Does a persistent launch (a ``num_tiles`` argument: its programs walk the tiles ``pid,
    pid + grid, ...``) have one tile per program?"""
    tiles = dict(launch.args).get("num_tiles")
    return isinstance(tiles, int) and tiles == launch.programs


def torch_op_seconds(torch_ops, scale, device=DEVICE):
    """The torch ops on the path: each call a launch, plus the bytes at the bandwidth."""
    return sum(calls * device.launch_s + nbytes * scale / device.copy_bandwidth for nbytes, calls in torch_ops.values())


def launch_count(counted):
    """Triton launches and torch ops of one step (as counted at the scaled-down shape)."""
    return len(counted.small) + sum(calls for _, calls in counted.torch_ops.values())


def check_same_path(name, counted):
    big = [launch.signature() for launch in counted.headline]
    small = [launch.signature() for launch in counted.small]
    if big != small:
        raise RuntimeError(
            f"{name}: the scaled-down shape takes another launch path than the headline shape: {big} vs {small}"
        )


def calibrated_seconds(launches, counted, device=DEVICE, l2="nominal"):
    scale = counted.elements / counted.small_elements
    return sum(launch.calibrated_s(device, l2) for launch in launches) + torch_op_seconds(
        counted.torch_ops, scale, device
    )


def prediction_range(launches, counted, device=DEVICE):
    """``(nominal, best, worst)`` seconds: the fitted device with the nominal L2 rule, and the
    extremes over every leave-one-family-out fit and, where a re-read is near the L2 boundary,
    over hit and miss."""
    outcomes = L2_OUTCOMES if any(launch.l2_uncertain for launch in launches) else ("nominal",)
    times = [calibrated_seconds(launches, counted, variant, l2) for variant in device.variants() for l2 in outcomes]
    return calibrated_seconds(launches, counted, device), min(times), max(times)


def model_counted(name, counted, code_by_key, device=DEVICE):
    """Per-launch and total figures of a counted workload."""
    check_same_path(name, counted)
    scale = counted.elements / counted.small_elements
    launches = [
        LaunchCounts(big, small, code_by_key[spec_key(big)], scale, device)
        for big, small in zip(counted.headline, counted.small)
    ]
    nominal, best, worst = prediction_range(launches, counted, device)
    torch_bytes = sum(nbytes for nbytes, _ in counted.torch_ops.values()) * scale
    uncalibrated = sum(max(launch.times(device)[:3]) for launch in launches) + torch_bytes / device.copy_bandwidth
    return {
        "launch_objects": launches,
        "calibrated_ms": nominal * 1e3,
        "calibrated_best_ms": best * 1e3,
        "calibrated_worst_ms": worst * 1e3,
        "modeled_ms": uncalibrated * 1e3,
        "launch_count": launch_count(counted),
        "torch_op_bytes": torch_bytes,
        "torch_ops": {
            k: {"bytes": v[0] * scale, "calls": v[1]}
            for k, v in sorted(counted.torch_ops.items(), key=lambda kv: -kv[1][0])
        },
        "l2_uncertain": any(launch.l2_uncertain for launch in launches),
    }


def describe_launch(launch, device=DEVICE):
    big, code = launch.big, launch.code
    issue, mufu, transfer, serial = launch.times(device)
    constexprs = big.constexprs()
    return {
        "kernel": big.qualname,
        "grid": list(big.grid),
        "num_warps": launch.warps,
        "num_stages": code["num_stages"],
        "constexprs": {
            k: repr(v) if not isinstance(v, (int, float, bool, str, type(None))) else v for k, v in constexprs.items()
        },
        "registers": code["registers"],
        "spill_bytes_per_thread": code["local_bytes"],
        "spill_instructions": code["spill_instructions"],
        "shared_bytes": code["shared_bytes"],
        "programs_per_sm": launch.per_sm,
        "resident_programs": launch.resident,
        "active_sms": launch.active_sms,
        "waves": launch.waves,
        "rounds_per_program": launch.rounds_per_program,
        "warp_instructions": launch.warp_instructions,
        "mufu_warp_instructions": launch.mufu,
        "bytes": launch.bytes(device),
        "bytes_by_l2": {l2: launch.bytes(device, l2) for l2 in L2_OUTCOMES},
        "load_first_bytes": launch.small.load_first_bytes * launch.scale,
        "store_bytes": launch.store_bytes,
        "reread_bytes": (sum(b for _, b in launch.small.reread_same_program) + launch.small.reread_other_program_bytes)
        * launch.scale,
        "l2_uncertain": launch.l2_uncertain,
        "issue_ms": issue * 1e3,
        "mufu_ms": mufu * 1e3,
        "bytes_ms": transfer * 1e3,
        "serial_ms": serial * 1e3,
        "modeled_ms": max(issue, mufu, transfer) * 1e3,
        "calibrated_ms": launch.calibrated_s(device) * 1e3,
        "bound": launch.bound(device),
        "loops": launch.loops,
    }


def model_case(case, counted, code_by_key, device=DEVICE):
    """A headline case: the figures above against its floor and target."""
    m = model_counted(case.name, counted, code_by_key, device)
    launches = m.pop("launch_objects")
    described = [describe_launch(launch, device) for launch in launches]
    floor_s = counted.floor_bytes / device.copy_bandwidth
    kernel_bytes = sum(d["bytes"] for d in described)
    all_bytes = kernel_bytes + m["torch_op_bytes"]
    main = max(described, key=lambda d: d["calibrated_ms"]) if described else None
    numel = counted.elements
    pct = lambda ms: 100 * floor_s / (ms / 1e3) if ms else None  # noqa: E731
    for launch in described:
        unmeasured = [
            loop["source"]
            for loop in launch["loops"]
            if loop["trips_per_entry"] is None
            and (loop["parent"] < 0 or launch["loops"][loop["parent"]]["iterations_per_program"] > 0)
        ]
        if unmeasured:
            # a SASS loop whose source loop ran no ``range`` call: its line info and the
            # interpreter's source disagree (or it is a ``while`` loop); its count is a guess
            print(
                f"perf.model: note: {case.name}: {launch['kernel']}: SASS loops of {unmeasured} ran no measured "
                "trip and count as not run (right for a loop behind an untaken runtime branch)"
            )
    return {
        "case": case.name,
        "family": case.family,
        "dtype": case.dtype,
        "options": case.options,
        "grad_output": case.grad_output,
        "compiled": case.compiled,
        "headline": case.headline,
        "shape": list(case.shape),
        "scaled_down_shape": list(case.small_shape),
        "scale": counted.elements / counted.small_elements,
        "counted": (
            "bytes, trips, rounds and executed lines counted under the interpreter at scaled_down_shape, "
            "multiplied by scale (headline / scaled-down logits elements), code outside loops by headline / "
            "scaled-down programs; launches and machine code from the headline shape"
        ),
        "launch": (
            f"{main['kernel']} grid {main['grid'][0]}, {main['num_warps']} warps, "
            + ", ".join(f"{k}={v}" for k, v in main["constexprs"].items() if k.startswith("BLOCK"))
        )
        if main
        else "",
        "registers": max((d["registers"] for d in described), default=0),
        "spills": sum(d["spill_bytes_per_thread"] for d in described),
        "shared_bytes": main["shared_bytes"] if main else None,
        "occupancy_programs_per_sm": main["programs_per_sm"] if main else None,
        "active_sms": main["active_sms"] if main else None,
        "waves": main["waves"] if main else None,
        "rounds_per_program": main["rounds_per_program"] if main else None,
        "instructions_per_element": sum(d["warp_instructions"] for d in described) * 32 / numel,
        "mufu_per_element": sum(d["mufu_warp_instructions"] for d in described) * 32 / numel,
        "kernel_bytes": kernel_bytes,
        "torch_op_bytes": m["torch_op_bytes"],
        "torch_ops": m["torch_ops"],
        "floor_bytes": counted.floor_bytes,
        "bytes_over_floor": all_bytes / counted.floor_bytes,
        "issue_ms": sum(d["issue_ms"] for d in described),
        "mufu_ms": sum(d["mufu_ms"] for d in described),
        "bytes_ms": all_bytes / device.copy_bandwidth * 1e3,
        "serial_ms": sum(d["serial_ms"] for d in described),
        "floor_ms": floor_s * 1e3,
        "modeled_ms": m["modeled_ms"],
        "modeled_pct_of_floor": pct(m["modeled_ms"]),
        "calibrated_ms": m["calibrated_ms"],
        "calibrated_worst_ms": m["calibrated_worst_ms"],
        "calibrated_pct_of_floor": pct(m["calibrated_ms"]),
        "calibrated_pct_of_floor_worst": pct(m["calibrated_worst_ms"]),
        "calibrated_pct_of_floor_best": pct(m["calibrated_best_ms"]),
        "launch_count": m["launch_count"],
        "l2_uncertain": m["l2_uncertain"],
        "bound": main["bound"] if main else "bytes",
        "target_pct_of_floor": case.target_pct_of_floor,
        "target_bytes_over_floor": case.target_bytes_over_floor,
        "launches": described,
    }
