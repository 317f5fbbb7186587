"""Markdown summary of a sweep, from its JSON alone.

    python -m perf.summary perf/results/cpu/results.json     # rewrites summary.md beside it
"""

import argparse
import json
from pathlib import Path

from .cases import MODES

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward+backward"}


def _ordered(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _cell(point):
    if point is None:
        return ""
    if point["status"] != "ok":
        return point["status"]
    return f"{point['ms']:.3f} ({point['pct_of_floor']:.0f}%)"


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
            lines += [f"#### {family}, {dtype}, {MODE_TITLES[mode]}: median ms (% of copy-bandwidth floor)", ""]
            lines.append("| series | shape | floor ms | " + " | ".join(labels) + " |")
            lines.append("|---|---|---:|" + "---:|" * len(labels))
            for series, shape in _ordered((p["series"], _shape(p)) for p in subset):
                row = [p for p in subset if p["series"] == series and _shape(p) == shape]
                by_label = {p["label"]: p for p in row}
                cells = [_cell(by_label.get(label)) for label in labels]
                lines.append(f"| {series} | {shape} | {row[0]['floor_ms']:.3f} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def headline_table(result):
    """The headline cases, one block per case: ms, GB/s, % of floor, extra peak memory."""
    points = [p for p in result["points"] if p["family"] == "table"]
    lines = []
    for shape in _ordered(_shape(p) for p in points):
        rows = [p for p in points if _shape(p) == shape]
        head = rows[0]
        lines += [
            f"**{head['series']} {shape}**, {head['dtype']} {MODE_TITLES[head['mode']]}, "
            f"floor {head['floor_ms']:.3f} ms",
            "",
            "| implementation | ms (p20-p80) | GB/s | % of floor | extra peak MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in rows:
            if p["status"] != "ok":
                lines.append(f"| {p['label']} | {p['status']} | | | |")
                continue
            memory = "n/a" if p["extra_peak_mb"] is None else f"{p['extra_peak_mb']:.0f}"
            lines.append(
                f"| {p['label']} | {p['ms']:.3f} ({p['ms_p20']:.3f}-{p['ms_p80']:.3f}) | {p['gbs']:.1f} | "
                f"{p['pct_of_floor']:.1f} | {memory} |"
            )
        lines.append("")
    return "\n".join(lines)


def render(result):
    device, versions = result["device"], result["versions"]
    lines = [f"# triton_focal benchmarks on {device['name']}", ""]
    if not device["is_gpu"]:
        lines += [f"> **{device['note']}**", ""]
    lines += [
        f"- command: `{result['command']}`" + (f" (env: {result['env']})" if result.get("env") else ""),
        f"- date: {result['date']}",
        f"- device: {device['name']}" + (f", driver {device['driver']}" if device.get("driver") else "")
        + (f", CUDA {device['cuda_runtime']}" if device.get("cuda_runtime") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- measured copy bandwidth (read + write): {result['copy_bandwidth_gbs']:.1f} GB/s; the floor of a point "
        "is its byte count (read logits, read target, write grad) at that rate",
        f"- timing: {result['timing']}",
        f"- skipped: " + ("; ".join(f"{s['provider']} ({s['reason']})" for s in result["skipped"]) or "none"),
        "",
    ]
    if any(p["family"] == "table" for p in result["points"]):
        lines += ["## Headline cases", "", headline_table(result), ""]
    for family in _ordered(p["family"] for p in result["points"]):
        if family != "table":
            lines += [f"## {family}", ""] + family_tables(result, family)
    failed = [p for p in result["points"] if p["status"] != "ok"]
    if failed:
        lines += ["## Points that did not run", ""]
        lines += [f"- {p['family']} {_shape(p)} {p['dtype']} {p['mode']} {p['label']}: {p['error']}" for p in failed]
        lines.append("")
    return "\n".join(lines)


def write_summary(result, out):
    path = Path(out) / "summary.md"
    path.write_text(render(result))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m perf.summary", description="summary.md from results.json")
    parser.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    print(f"wrote {write_summary(json.loads(args.json.read_text()), args.json.parent)}")


if __name__ == "__main__":
    main()
