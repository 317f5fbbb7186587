"""The model's tables and plots (written under ``perf/results/model/``, never into the README)."""

from .device import DEVICE


def _pct(value):
    return f"{value:.0f}%" if value is not None else ""


def markdown(results, device=DEVICE):
    """The full table: calibrated % of the floor with its pessimistic end, and what bounds it."""
    head = (
        "| case | launch | regs | spills | SMs busy | waves | rounds/program | launches | instr/elem | "
        "bytes/floor | floor ms | calibrated ms | calibrated % of floor | worst % | uncalibrated % | "
        "target | bound |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    rows = []
    for r in results:
        target = (
            f">= {r['target_pct_of_floor']}%"
            if r["target_pct_of_floor"] is not None
            else f"bytes <= {r['target_bytes_over_floor']}x"
            if r["target_bytes_over_floor"] is not None
            else ""
        )
        rows.append(
            f"| {r['case']} | {r['launch']} | {r['registers']} | {r['spills']} | {r['active_sms']} | {r['waves']} | "
            f"{r['rounds_per_program']:.0f} | {r['launch_count']} | {r['instructions_per_element']:.0f} | "
            f"{r['bytes_over_floor']:.2f} | {r['floor_ms']:.3f} | {r['calibrated_ms']:.3f} | "
            f"{_pct(r['calibrated_pct_of_floor'])} | {_pct(r['calibrated_pct_of_floor_worst'])} | "
            f"{_pct(r['modeled_pct_of_floor'])} | {target} | {r['bound']} |"
        )
    note = (
        f"Modeled, not measured: {device.name}, {device.sms} SMs at {device.clock_hz / 1e9:.2f} GHz, "
        f"{device.copy_bandwidth / 1e12:.1f} TB/s; fitted on measured H100 times of other Triton kernels "
        f"(`python -m perf.model --calibrate`): {device.launch_s * 1e6:.2f} us per launch, "
        f"{device.round_latency_s * 1e9:.0f} ns per dependent memory round, issue factor {device.issue_factor:.2f}. "
        '"worst": the pessimistic end, over the leave-one-family-out fits and, where a re-read is near the '
        'L2 boundary, over hit and miss; targets are judged there. "uncalibrated": max(issue, MUFU, bytes), no '
        "launch or latency cost. launches: Triton launches and torch ops of one forward + backward. instr/elem: "
        "dynamic SASS warp instructions x 32 / logits elements.\n\n"
    )
    return note + head + "\n".join(rows) + "\n"


def summary_table(results):
    """The compact table of the ``loss.backward()`` cases (what the README quotes)."""
    lines = [
        "| case (forward + backward) | calibrated % of floor | range | launches | bound | target |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if r["grad_output"] != 1 or r["options"] == "per-class gamma/alpha/weight":
            continue
        target = f"{r['target_pct_of_floor']}%" if r["target_pct_of_floor"] is not None else ""
        lines.append(
            f"| {r['case'].replace(', loss.backward()', '')} | {_pct(r['calibrated_pct_of_floor'])} | "
            f"{_pct(r['calibrated_pct_of_floor_worst'])}-{_pct(r['calibrated_pct_of_floor_best'])} | "
            f"{r['launch_count']} | {r['bound']} | {target} |"
        )
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r["calibrated_pct_of_floor"] is not None]
    names = [r["case"] for r in shown]
    y = range(len(names))
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.5))
    worst = [r["calibrated_pct_of_floor_worst"] for r in shown]
    best = [r["calibrated_pct_of_floor_best"] for r in shown]
    ax.barh(
        list(y),
        [r["calibrated_pct_of_floor"] for r in shown],
        height=0.6,
        color="#3b75af",
        label="calibrated (fitted constants)",
    )
    ax.errorbar(
        [r["calibrated_pct_of_floor"] for r in shown],
        list(y),
        xerr=[
            [c - w for c, w in zip([r["calibrated_pct_of_floor"] for r in shown], worst)],
            [b - c for c, b in zip([r["calibrated_pct_of_floor"] for r in shown], best)],
        ],
        fmt="none",
        ecolor="black",
        lw=1,
        capsize=2,
        label="range over fits and L2 outcomes",
    )
    ax.scatter(
        [r["modeled_pct_of_floor"] for r in shown],
        list(y),
        marker="|",
        color="#999999",
        s=80,
        label="uncalibrated bound",
    )
    for i, r in enumerate(shown):
        if r["target_pct_of_floor"] is not None:
            ax.plot([r["target_pct_of_floor"]] * 2, [i - 0.45, i + 0.45], color="#d62728", lw=1.5)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("% of the memory floor, modeled (red: target, judged at the worst end)")
    ax.set_title("perf.model: H100 modeled from sm_90 SASS, calibrated on measured Triton kernels; no GPU")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
