"""A committed case re-timed on a device model: the calibrated time of the launches and torch
ops that ``model.json`` records, on any :class:`~perf.model.device.DeviceModel`, without counting
or compiling again.

What a launch costs splits into the counts (instructions, MUFU operations, dependent memory
rounds, DRAM bytes at each L2 outcome, waves and residency: the kernel's and the shape's) and
the device (clock, bandwidth and the fitted constants). ``model.json`` keeps the counts, so the
same launches are re-timed on the H200 a GPU check ran on (``--measure``, ``--compare``, the
sweep's table) and fitted as calibration points (``perf/calibration/own.py``) by the formula of
``cost.py``, which :func:`case_range` reproduces for the modeled H100 exactly (a test checks it).
"""

import math

from .calibrate import predict


def launch_features(launch, device, l2="nominal"):
    """The terms of ``cost.py``'s formula that do not depend on the fitted constants, for one
    launch of ``model.json`` on ``device``; ``l2``: the outcome of re-reads near the L2 boundary."""
    clock, schedulers = device.clock_hz, device.warp_instructions_per_sm_per_clock
    programs = math.prod(launch["grid"])
    active = launch["active_sms"]
    resident_per_sm = launch["resident_programs"] / active
    nbytes = launch.get("bytes_by_l2", {}).get(l2, launch["bytes"])
    return {
        "kernel": launch["kernel"],
        "grid": list(launch["grid"]),
        "num_warps": launch["num_warps"],
        "issue_s": launch["warp_instructions"] / (active * schedulers * clock),
        "mufu_s": launch["mufu_warp_instructions"] * 32 / (active * device.mufu_lanes_per_sm_per_clock * clock),
        "bytes_s": nbytes / device.copy_bandwidth,
        "waves": launch["waves"],
        "rounds": launch["rounds_per_program"],
        "instructions_s": resident_per_sm * launch["warp_instructions"] / programs / (schedulers * clock),
        "transfer_s": resident_per_sm * nbytes / programs * active / device.copy_bandwidth,
        "registers": launch["registers"],
        "spills": launch["spill_bytes_per_thread"],
    }


def features(launches, torch_ops, device, l2="nominal", timing="wall"):
    """A calibration feature (``calibrate.predict``'s input) of these launches and torch ops
    (``model.json``'s ``{name: {"bytes", "calls"}}``). ``timing``: ``"wall"`` (a step's time,
    each launch's fixed cost included) or ``"device"`` (the profiler's kernel time: none)."""
    return {
        "launches": [launch_features(launch, device, l2) for launch in launches],
        "torch_ops": [[name, op["bytes"] / device.copy_bandwidth, op["calls"]] for name, op in torch_ops.items()],
        "timing": timing,
    }


def seconds(launches, torch_ops, device, l2="nominal", timing="wall"):
    """Modeled seconds at ``device``'s own fitted constants."""
    feature = features(launches, torch_ops, device, l2, timing)
    return float(predict(feature, device.launch_s, device.round_latency_s, device.issue_factor))


def case_range(row, device, timing="wall"):
    """``(nominal, best, worst)`` seconds of a ``model.json`` case on ``device``: its fitted
    constants with the nominal L2 rule, and the extremes over ``device.variants()`` and, where a
    re-read is near the L2 boundary, over hit and miss (``cost.prediction_range``)."""
    outcomes = ("nominal", "hit", "miss") if row["l2_uncertain"] else ("nominal",)
    ops = {} if timing == "device" else row["torch_ops"]
    times = [seconds(row["launches"], ops, v, l2, timing) for v in device.variants() for l2 in outcomes]
    return seconds(row["launches"], ops, device, timing=timing), min(times), max(times)
