"""The model's cases measured on a GPU: the numbers the model is judged by.

``python -m perf.model --measure --out DIR`` runs every case of ``headline.all_cases()`` at its
headline shape on the CUDA device, on random data, through the same public calls the model
counts (forward, then ``torch.autograd.grad``), and writes ``measured.json`` and
``measured.md`` into DIR:

- the time of one step: ``perf.timing.bench`` (``triton.testing.do_bench``: CUDA events, the L2
  flushed before every call, after a warm-up that compiles the kernels and settles the
  gradient policy), median and 20 / 80 % quantiles;
- each launch's device time in that step, from the profiler, and their sum: the kernels' own
  time, which the model predicts (per launch) and which a slow host cannot inflate;
- the host's time to issue one step (wall clock, no synchronization, averaged over 20 steps):
  where it exceeds the kernels' time the step's time is the host's, not the GPU's;
- the floor: the case's fewest bytes (``headline.run_case``'s count) at the copy bandwidth
  measured in the same run, and the step's % of it;
- the loss and gradient against the float64 reference backend on the same inputs (relative
  error of the loss; of the gradient as a norm), so a fast wrong kernel shows;
- beside each, the model's calibrated and pessimistic time for the same case, its launches
  (``perf/results/model/model.json``) re-timed on the measured GPU's device model
  (``retime.py``; the H100's where the GPU has none, ``device.model_for``): the step with its
  launch costs, and the kernels' device time beside the profiler's.

The compiled cases (``torch.compile`` around the loss) are left out: their compilation costs
more device time than their measurement, and the eager cases time the same kernels.
"""

import json
import os
import time

from .device import model_for
from .headline import _inputs, _loss_fn, public_loss

MODEL_JSON = os.path.join(os.path.dirname(__file__), "..", "results", "model", "model.json")


def _step(case, x, target, kwargs):
    import torch

    loss_fn = _loss_fn(case)

    def step():
        loss = loss_fn(x, target, kwargs)
        out = loss * case.grad_output if case.grad_output != 1 else loss
        return loss, torch.autograd.grad(out, x)[0]

    return step


def _floor_bytes(x, target, kwargs):
    floor = x.numel() * x.element_size() * 2 + target.numel() * target.element_size()
    for name in ("score", "mask"):  # as headline.run_case counts them
        if kwargs.get(name) is not None:
            floor += kwargs[name].numel() * kwargs[name].element_size()
    return floor


def _launch_times(step, steps=3):
    """Mean device time of each kernel in one step (us), from the profiler; {} where it fails."""
    import torch

    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        totals = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                calls, total = totals.get(event.name, (0, 0.0))
                totals[event.name] = (calls + 1, total + event.time_range.elapsed_us())
        return {
            name: {"calls_per_step": calls / steps, "us_per_step": total / steps}
            for name, (calls, total) in totals.items()
        }
    except Exception as err:  # the profiler is an extra: never lose the timing to it
        return {"error": repr(err)}


def _host_ms(step, device, steps=20):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    issued = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
    return issued / steps * 1e3


def _errors(case, x, target, kwargs, loss, grad):
    """Relative error of the loss and of the gradient (norm) against the float64 reference."""
    import torch

    fn = public_loss(case)
    x64 = x.detach().double().requires_grad_(True)
    t64 = target.double() if target.is_floating_point() else target
    kw64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
    ref = fn(x64, t64, backend="reference", **kw64)
    (ref_grad,) = torch.autograd.grad(ref * case.grad_output if case.grad_output != 1 else ref, x64)
    loss_err = ((loss.double() - ref).abs() / ref.abs().clamp_min(1e-30)).item()
    grad_err = ((grad.double() - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30)).item()
    finite = bool(torch.isfinite(loss).item() and torch.isfinite(grad).all().item())
    return loss_err, grad_err, finite


def _model_by_case():
    try:
        with open(MODEL_JSON) as f:
            return {r["case"]: r for r in json.load(f)}
    except OSError:
        return {}


def _modeled_on(modeled, device_model):
    """The model's figures of one case on ``device_model``: the step, its pessimistic end, and
    the kernels' device time (what the profiler's ``device_ms`` measures)."""
    from .retime import case_range

    nominal, _, worst = case_range(modeled, device_model)
    kernels, _, _ = case_range(modeled, device_model, timing="device")
    floor_s = modeled["floor_bytes"] / device_model.copy_bandwidth
    return {
        "model_ms": nominal * 1e3,
        "model_worst_ms": worst * 1e3,
        "model_kernels_ms": kernels * 1e3,
        "model_pct_of_floor": 100 * floor_s / nominal,
        "model_pct_of_floor_worst": 100 * floor_s / worst,
        "model_commit": modeled.get("triton_focal_commit"),
    }


def measure(cases, out_dir, device="cuda", check=True):
    import torch

    from ..timing import bench, copy_bandwidth_gbs, device_info, versions

    os.makedirs(out_dir, exist_ok=True)
    info = device_info(device)
    copy_gbs = copy_bandwidth_gbs(device)
    model = _model_by_case()
    device_model = model_for(info["name"])
    result = {
        "device": info,
        "versions": versions(),
        "copy_bandwidth_gbs": copy_gbs,
        "device_model": device_model.name,
        "cases": [],
    }
    print(f"perf.model --measure on {info['name']}: copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    for case in cases:
        if case.compiled:
            continue
        start = time.time()
        row = {"case": case.name}
        try:
            x, target, kwargs = _inputs(case, case.shape, headline=False, device=device)
            step = _step(case, x, target, kwargs)
            ms, p20, p80 = bench(step, device, quick=True)
            floor_ms = _floor_bytes(x, target, kwargs) / (copy_gbs * 1e9) * 1e3
            row.update(ms=ms, ms_p20=p20, ms_p80=p80, floor_ms=floor_ms, pct_of_floor=100 * floor_ms / ms)
            row["launches"] = _launch_times(step) if device == "cuda" else {}
            if row["launches"] and "error" not in row["launches"]:
                row["device_ms"] = sum(d["us_per_step"] for d in row["launches"].values()) / 1e3
                row["device_pct_of_floor"] = 100 * floor_ms / row["device_ms"]
            row["host_ms"] = _host_ms(step, device, steps=20 if device == "cuda" else 1)
        except Exception as err:  # one case failing: record it, keep the others
            row["error"] = repr(err)[:2000]
        if check and "error" not in row:
            try:  # the float64 reference of the largest cases takes tens of GB: a failure here loses no timing
                loss, grad = step()
                row["loss_rel_err"], row["grad_rel_err"], row["finite"] = _errors(case, x, target, kwargs, loss, grad)
            except Exception as err:
                row["check_error"] = repr(err)[:500]
            loss = grad = None
        modeled = model.get(case.name)
        if modeled:
            row.update(_modeled_on(modeled, device_model))
        row["seconds"] = round(time.time() - start, 1)
        result["cases"].append(row)
        print(_line(row), flush=True)
        x = target = kwargs = step = None
        if device == "cuda":
            torch.cuda.empty_cache()
        with open(os.path.join(out_dir, "measured.json"), "w") as f:  # after every case: a cut run keeps its data
            json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "measured.md"), "w") as f:
        f.write(markdown(result))
    return result


def _line(row):
    if "error" in row:
        return f"{row['case']}: ERROR {row['error'][:300]}"
    text = f"{row['case']}: {row['ms']:.3f} ms [{row['ms_p20']:.3f}, {row['ms_p80']:.3f}]"
    text += f", {row['pct_of_floor']:.0f}% of floor, host {row['host_ms']:.3f} ms"
    if "device_ms" in row:
        text += f", kernels {row['device_ms']:.3f} ms ({row['device_pct_of_floor']:.0f}%)"
    if "loss_rel_err" in row:
        text += f", rel. err loss {row['loss_rel_err']:.1e} grad {row['grad_rel_err']:.1e}"
    if "model_ms" in row:
        text += f"; model {row['model_ms']:.3f} ms, {row['model_pct_of_floor']:.0f}%"
        text += f" ({row['model_pct_of_floor_worst']:.0f}% worst), kernels {row['model_kernels_ms']:.3f} ms"
    return text + f" ({row['seconds']} s)"


def markdown(result):
    info, v = result["device"], result["versions"]
    lines = [
        f"# The model's cases measured on {info['name']}",
        "",
        f"`python -m perf.model --measure` on {info['name']} ({info['multiprocessors']} SMs, driver {info['driver']}, "
        f"CUDA {info['cuda_runtime']}), torch {v['torch']}, triton {v['triton']}, python {v['python']}; "
        f"copy bandwidth measured in the same run: {result['copy_bandwidth_gbs']:.0f} GB/s (read + write). "
        "step: median of do_bench (L2 flushed before each call) of one forward + backward, what a user's "
        "step costs; host: the time to issue it (no synchronization): where it exceeds the kernels', the step "
        "waits on the host; kernels: the device time of its launches (profiler), what the model predicts. "
        "floor: the case's fewest bytes at that bandwidth. The model columns are the launches of "
        f"`perf/results/model/model.json` re-timed on the {result.get('device_model', 'H100')} (calibrated; worst: its "
        "pessimistic end; model kernels: the launches' device time, beside the profiler's).",
        "",
        "| case | step ms | p20-p80 | % of floor | host ms | kernels ms | kernels % of floor | loss rel. err "
        "| grad rel. err | model ms | model % (worst) | model kernels ms | kernels measured / modeled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["cases"]:
        if "error" in row:
            lines.append(f"| {row['case']} | error: {row['error'][:120]} |" + "  |" * 12)
            continue
        model = (
            (f"{row['model_ms']:.3f}", f"{row['model_pct_of_floor']:.0f}% ({row['model_pct_of_floor_worst']:.0f}%)")
            if "model_ms" in row
            else ("", "")
        )
        against = (
            (f"{row['model_kernels_ms']:.3f}", f"{row['device_ms'] / row['model_kernels_ms']:.2f}")
            if "model_kernels_ms" in row and "device_ms" in row
            else ("", "")
        )
        errs = (f"{row['loss_rel_err']:.1e}", f"{row['grad_rel_err']:.1e}") if "loss_rel_err" in row else ("", "")
        kernels = (f"{row['device_ms']:.3f}", f"{row['device_pct_of_floor']:.0f}%") if "device_ms" in row else ("", "")
        lines.append(
            f"| {row['case']} | {row['ms']:.3f} | {row['ms_p20']:.3f}-{row['ms_p80']:.3f} | "
            f"{row['pct_of_floor']:.0f}% | {row['host_ms']:.3f} | {kernels[0]} | {kernels[1]} | "
            f"{errs[0]} | {errs[1]} | {model[0]} | {model[1]} | {against[0]} | {against[1]} |"
        )
    lines += ["", "## Launches (device us per step, from the profiler)", ""]
    for row in result["cases"]:
        launches = row.get("launches") or {}
        if "error" in launches or not launches:
            continue
        parts = ", ".join(f"{name[:60]} {d['us_per_step']:.1f}" for name, d in launches.items())
        lines.append(f"- {row['case']}: {parts}")
    return "\n".join(lines) + "\n"
