"""Markdown summary of a sweep, from its JSON alone.

python -m perf.summary perf/results/cpu/results.json     # rewrites summary.md beside it
"""

import argparse
import json
import os
from pathlib import Path

from .cases import MODES

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward+backward"}


def _ordered(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _pct(point):
    """'% of floor', or 'cache' where the time beat the copy-bandwidth floor (the data sat in
    cache, so that floor is none: no figure above 100 % of it is ever shown)."""
    return "cache" if point.get("above_floor") else f"{point['pct_of_floor']:.0f}%"


def _spread(point):
    """The spread between repetitions (or rounds): (p80 - p20) / median."""
    return (point["ms_p80"] - point["ms_p20"]) / point["ms"] * 100


def _cell(point):
    if point is None:
        return ""
    if point["status"] != "ok":
        return point["status"]
    return f"{point['ms']:.3f} ±{_spread(point) / 2:.0f}% ({_pct(point)})"


def _shape(point):
    return "x".join(str(d) for d in point["shape"]) + (f" {point['target']}" if point["family"] == "det" else "")


def family_tables(result, family):
    """A table per (dtype, mode): rows are shapes, columns implementations, cells
    'median ms (% of floor)'."""
    points = [p for p in result["points"] if p["family"] == family]
    lines = []
    for dtype in _ordered(p["dtype"] for p in points):
        for mode in [m for m in MODES if any(p["mode"] == m for p in points)]:
            subset = [p for p in points if p["dtype"] == dtype and p["mode"] == mode]
            labels = _ordered(p["label"] for p in subset)
            lines += [
                f"#### {family}, {dtype}, {MODE_TITLES[mode]}: median ms ±half the p20-p80 spread "
                "(% of copy-bandwidth floor; 'cache': faster than that floor, data in cache)",
                "",
            ]
            lines.append("| series | shape | floor ms | " + " | ".join(labels) + " |")
            lines.append("|---|---|---:|" + "---:|" * len(labels))
            for series, shape in _ordered((p["series"], _shape(p)) for p in subset):
                row = [p for p in subset if p["series"] == series and _shape(p) == shape]
                by_label = {p["label"]: p for p in row}
                cells = [_cell(by_label.get(label)) for label in labels]
                lines.append(f"| {series} | {shape} | {row[0]['floor_ms']:.3f} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


MODEL_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "model", "model.json")


def modeled_cases(path=MODEL_JSON):
    """The cost model's forward + ``loss.backward()`` cases (``perf/results/model/model.json``),
    keyed by (shape, kind, dtype); empty where the file is absent."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        results = json.load(f)
    out = {}
    for r in results:
        if r["grad_output"] == 1 and not r["options"] and not r["compiled"]:
            kind = "dense" if "dense" in r["family"] else "index"
            out[(tuple(r["shape"]), kind, r["dtype"])] = r
    return out


def _modeled(point, modeled):
    if point["provider"] != "triton":
        return None
    return modeled.get((tuple(point["shape"]), point.get("target", "index"), point["dtype"]))


def headline_table(result, modeled=None):
    """The headline cases, one block per case: ms, GB/s, % of floor, extra peak memory, and for
    the Triton kernels the cost model's prediction (its fitted value and pessimistic end) and
    measured / modeled."""
    from .model.device import model_for
    from .model.retime import case_range

    modeled = modeled_cases() if modeled is None else modeled
    device_model = model_for(result.get("device", {}).get("name", ""))
    points = [p for p in result["points"] if p["family"] == "table"]
    lines = []
    for shape in _ordered(_shape(p) for p in points):
        rows = [p for p in points if _shape(p) == shape]
        head = rows[0]
        lines += [
            f"**{head['series']} {shape}**, {head['dtype']} {MODE_TITLES[head['mode']]}, "
            f"floor {head['floor_ms']:.3f} ms",
            "",
            "| implementation | ms (p20-p80) | GB/s | % of floor | extra peak MiB | modeled ms (worst) "
            "| measured / modeled |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in rows:
            if p["status"] != "ok":
                lines.append(f"| {p['label']} | {p['status']} | | | | | |")
                continue
            memory = "n/a" if p["extra_peak_mb"] is None else f"{p['extra_peak_mb']:.0f}"
            pct = "cache" if p.get("above_floor") else f"{p['pct_of_floor']:.1f}"
            model = _modeled(p, modeled)
            if model:
                nominal, _, worst = case_range(model, device_model)
                predicted, ratio = f"{nominal * 1e3:.3f} ({worst * 1e3:.3f})", f"{p['ms'] / (nominal * 1e3):.2f}"
            else:
                predicted = ratio = ""
            lines.append(
                f"| {p['label']} | {p['ms']:.3f} ({p['ms_p20']:.3f}-{p['ms_p80']:.3f}) | {p['gbs']:.1f} | "
                f"{pct} | {memory} | {predicted} | {ratio} |"
            )
        lines.append("")
    if modeled:
        lines.append(
            f"modeled: the launches of `python -m perf.model` (perf/results/model/model.json) re-timed on the "
            f"{device_model.name} (perf/model/retime.py); where that is not this device, the ratio says how far "
            "this device is from the modeled one, not only the model's error."
        )
    return "\n".join(lines)


def cpu_table(result):
    """The CPU comparison: per case and dtype, each implementation's forward+backward time as a
    ratio to the gamma = 0 baseline of the same rounds (F.cross_entropy or BCE), median over
    the interleaved rounds, with the range of the per-round ratios; the best focal loss bold."""
    points = [p for p in result["points"] if p["family"] == "cpu" and p["ratio"] is not None]
    if not points:
        return []
    labels = _ordered(p["label"] for p in points)
    lines = [
        "| case | dtype | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for case, dtype in _ordered((_case_name(p), p["dtype"]) for p in points):
        row = {p["label"]: p for p in points if _case_name(p) == case and p["dtype"] == dtype}
        focal = [p for p in row.values() if p["provider"] not in ("cross_entropy", "bce", "smp")]
        best = min(focal, key=lambda p: p["ratio"])["label"] if focal else None
        cells = []
        for label in labels:
            p = row.get(label)
            if p is None:
                cells.append("-")
                continue
            text = f"{p['ratio']:.2f} [{p['ratio_min']:.2f}-{p['ratio_max']:.2f}]"
            cells.append(f"**{text}**" if label == best else text)
        lines.append(f"| {case} | {dtype} | " + " | ".join(cells) + " |")
    base = {p["dtype"] + _case_name(p): p for p in points if p["provider"] in ("cross_entropy", "bce")}
    lines += [
        "",
        "Baseline times (ms, median over rounds): "
        + "; ".join(f"{p['series']} {_shape(p)} {p['dtype']} {p['ms']:.1f}" for p in base.values())
        + ".",
    ]
    loads = [p["load"] for p in points if p.get("load")]
    if loads:
        ones = [
            value
            for load in loads
            for value in (load["before"] or {}, load["after"] or {})
            for value in [value.get("1min")]
            if value is not None
        ]
        if ones:
            lines.append(
                f"Machine load (1-minute average) during these cases: {min(ones):.1f} to {max(ones):.1f} "
                f"on {loads[0]['before']['cores']} cores."
            )
    return lines


def _case_name(point):
    return f"{point['family'] if point['family'] != 'cpu' else point['series']} {_shape(point)}"


def render(result):
    device, versions = result["device"], result["versions"]
    lines = [f"# triton_focal benchmarks on {device['name']}", ""]
    if not device["is_gpu"]:
        lines += [f"> **{device['note']}**", ""]
    lines += [
        f"- command: `{result['command']}`" + (f" (env: {result['env']})" if result.get("env") else ""),
        f"- date: {result['date']}",
        f"- device: {device['name']}"
        + (f", driver {device['driver']}" if device.get("driver") else "")
        + (f", CUDA {device['cuda_runtime']}" if device.get("cuda_runtime") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- measured copy bandwidth (read + write): {result['copy_bandwidth_gbs']:.1f} GB/s; the floor of a point "
        "is its byte count (read logits, read target, write grad) at that rate",
        f"- timing: {result['timing']}"
        + (f"; {result['rounds']} interleaved rounds per case" if result.get("rounds") else ""),
        "- machine load (1, 5, 15 min averages): "
        + f"{_load(result.get('load_at_start'))} at the start, {_load(result.get('load_at_end'))} at the end"
        + f" ({result.get('cpu_cores', '?')} cores); the ± of each time is half its p20-p80 spread",
        "- skipped: " + ("; ".join(f"{s['provider']} ({s['reason']})" for s in result["skipped"]) or "none"),
        "",
    ]
    found = load_range(result)
    if found and found[1] > found[2]:
        lines += [
            f"> **Warning: the load average reached {found[1]:.1f} on {found[2]} cores during this run.** "
            "Other jobs shared the machine, so these times include waiting for a core; rerun on an idle "
            "machine before comparing them.",
            "",
        ]
    if any(p["family"] == "table" for p in result["points"]):
        lines += ["## Headline cases", "", headline_table(result), ""]
    if any(p["family"] == "cpu" for p in result["points"]):
        lines += (
            [
                "## CPU comparison: forward+backward time / the gamma=0 baseline's (lower is faster)",
                "",
                "Median of the per-round ratios [lowest-highest round]; the baseline is F.cross_entropy for "
                "softmax cases and F.binary_cross_entropy_with_logits for detection.",
                "",
            ]
            + cpu_table(result)
            + [""]
        )
    for family in _ordered(p["family"] for p in result["points"]):
        if family not in ("table", "cpu"):
            lines += [f"## {family}", ""] + family_tables(result, family)
    failed = [p for p in result["points"] if p["status"] != "ok"]
    if failed:
        lines += ["## Points that did not run", ""]
        lines += [f"- {p['family']} {_shape(p)} {p['dtype']} {p['mode']} {p['label']}: {p['error']}" for p in failed]
        lines.append("")
    return "\n".join(lines)


def load_range(result):
    """(lowest, highest) 1-minute load average over the run and the core count, or None."""
    loads = [result.get("load_at_start"), result.get("load_at_end")]
    loads += [
        side for p in result["points"] if p.get("load") for side in (p["load"].get("before"), p["load"].get("after"))
    ]
    loads = [load for load in loads if load]
    if not loads:
        return None
    ones = [load["1min"] for load in loads]
    return min(ones), max(ones), loads[0]["cores"]


def load_text(result):
    """'load average (1 min) 1.2 to 3.4 on 2 cores' (with a warning past the cores), or ''."""
    found = load_range(result)
    if found is None:
        return ""
    low, high, cores = found
    text = f"load average (1 min) {low:.1f} to {high:.1f} on {cores} cores"
    if high > cores:
        text += ": more than the cores, other jobs shared the machine"
    return text


def _load(load):
    if not load:
        return "unknown"
    return f"{load['1min']:.1f}/{load['5min']:.1f}/{load['15min']:.1f}"


def write_summary(result, out):
    path = Path(out) / "summary.md"
    path.write_text(render(result))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m perf.summary",
        description="summary.md from results.json (written beside it)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("json", type=Path, help="a results.json written by python -m perf.sweep")
    args = parser.parse_args(argv)
    print(f"wrote {write_summary(json.loads(args.json.read_text()), args.json.parent)}")


if __name__ == "__main__":
    main()
