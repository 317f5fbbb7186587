"""Draw the sweep's figures from its JSON alone, so they can be redrawn without a GPU.

    python -m perf.plot perf/results/nvidia-h100-80gb-hbm3/results.json

One PNG per family, ``<family>_<device>.png``: a row per (series, dtype); a column per mode
with achieved GB/s against size (one curve per implementation, the measured copy bandwidth
as a horizontal line), and a last column with the extra peak memory of forward+backward.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .cases import MODES  # noqa: E402
from .summary import load_text  # noqa: E402

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward+backward"}
MEMORY_MODE = "fwd+bwd"
WIDE_RANGE = 20  # a y range wider than this factor is drawn on a log axis


def _ordered(values, order=None):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    if order:
        seen.sort(key=lambda v: order.index(v) if v in order else len(order))
    return seen


def _short(x):
    """128256 -> '128k', 1600000 -> '1.6M'."""
    if x >= 10**6:
        return f"{x / 1e6:.3g}M"
    if x >= 10**4:
        return f"{x / 1e3:.0f}k"
    return str(x)


def _curves(points):
    """{label: ([x], [point])} over the points that ran, sorted by x."""
    curves = {}
    for p in sorted(points, key=lambda p: p["x"]):
        if p["status"] == "ok":
            curves.setdefault(p["label"], []).append(p)
    return curves


def plot_family(result, family, out):
    """One family's figure; returns its path, or None if the family has no points."""
    points = [p for p in result["points"] if p["family"] == family]
    if not points:
        return None
    device = result["device"]
    rows = [(s, d) for s in _ordered(p["series"] for p in points) for d in _ordered(p["dtype"] for p in points)]
    modes = _ordered((p["mode"] for p in points), list(MODES))
    # A memory column only where memory was measured (the CPU has no allocator statistics):
    # never a panel of nothing.
    measured = any(p["extra_peak_mb"] is not None for p in points if p["mode"] == MEMORY_MODE)
    cols = modes + ([MEMORY_MODE] if MEMORY_MODE in modes and measured else [])
    labels = _ordered(p["label"] for p in points)
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}

    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.2 * len(rows)), squeeze=False)
    for r, (series, dtype) in enumerate(rows):
        for c, mode in enumerate(cols):
            ax = axes[r][c]
            memory = c == len(modes)
            subset = [p for p in points if p["series"] == series and p["dtype"] == dtype and p["mode"] == mode]
            x_name = subset[0]["x_name"] if subset else ""
            drawn = []
            for label, curve in _curves(subset).items():
                ys = [p["extra_peak_mb"] if memory else p["gbs"] for p in curve]
                if any(y is None for y in ys):
                    continue
                xs = [p["x"] for p in curve]
                if memory:
                    ax.plot(xs, ys, marker="o", ms=3, label=label, color=colors[label])
                else:
                    # The spread between repetitions (p20-p80 of the time) of every point, as
                    # GB/s: the slower time gives the lower bandwidth.
                    # (clamped at 0: rounding of the quantiles, never a real negative spread)
                    low = [max(y - p["bytes"] / (p["ms_p80"] * 1e6), 0.0) for y, p in zip(ys, curve)]
                    high = [max(p["bytes"] / (p["ms_p20"] * 1e6) - y, 0.0) for y, p in zip(ys, curve)]
                    ax.errorbar(
                        xs, ys, yerr=[low, high], marker="o", ms=3, capsize=2, lw=1, label=label, color=colors[label]
                    )
                drawn += [y for y in ys if y > 0]
            if memory:
                ax.set_ylabel("extra peak memory (MiB)")
                ax.set_title(f"{series}, {dtype}: memory, {MODE_TITLES[mode]}", fontsize=9)
            else:
                ax.axhline(result["copy_bandwidth_gbs"], color="black", ls="--", lw=1, label="copy bandwidth")
                ax.set_ylabel("GB/s")
                ax.set_title(f"{series}, {dtype}: {MODE_TITLES[mode]}", fontsize=9)
                drawn.append(result["copy_bandwidth_gbs"])
            if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > WIDE_RANGE:
                ax.set_yscale("log")  # implementations apart by orders of magnitude (CPU shapes)
            ax.set_xlabel(x_name)
            xs = sorted({p["x"] for p in subset})
            if len(xs) > 1 and xs[0] > 0:
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(xs, [_short(x) for x in xs], fontsize=7)
            ax.grid(alpha=0.3)
    handles, names = {}, []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in handles:
                handles[name] = handle
                names.append(name)
    title = f"{family} on {device['name']}"
    if not device["is_gpu"]:
        title += " (CPU figures, NOT GPU figures)"
    load = load_text(result)
    if load:
        title += f"\n{load}"
    fig.suptitle(title, fontsize=11)
    # Room above the panels for the title's two lines, whatever the figure's height.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    fig.legend(
        [handles[n] for n in names],
        names,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(names), 4),
        fontsize=8,
    )
    path = Path(out) / f"{family}_{device['slug']}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(result, out):
    """Every family's figure; returns the paths written."""
    families = _ordered(p["family"] for p in result["points"])
    return [path for family in families if (path := plot_family(result, family, out)) is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m perf.plot",
        description="redraw the figures from results.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("json", type=Path, help="a results.json written by python -m perf.sweep")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (None: beside the JSON)")
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text())
    out = args.out or args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    for path in plot_all(result, out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
