"""The command line of ``perf.model`` (see the package docstring)."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from . import __doc__ as PACKAGE_DOC
from .machine_code import REPO

RESULTS = os.path.join(REPO, "perf", "results", "model")


def _commit_of(package_dir):
    """The commit of ``package_dir``, marked when its files differ from it."""

    def git(*args):
        done = subprocess.run(["git", "-C", package_dir, *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--", "."):
        commit += " + uncommitted changes"
    return commit or "unknown"


def _meta(argv, elapsed):
    import torch
    import triton

    from .device import DEVICE

    command = "python -m perf.model " + " ".join(argv if argv is not None else sys.argv[1:])
    return {
        "device_model": dataclasses.asdict(DEVICE),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "command": command.strip(),
        "seconds": round(elapsed, 1),
    }


def _calibrate(args, argv):
    from . import calibrate
    from .run import default_cache

    start = time.time()
    points_file = args.points or calibrate.DEFAULT_POINTS
    rows = calibrate.read_points(points_file)
    print(f"perf.model: calibrating on {len(rows)} points from {points_file}", flush=True)
    counted = None
    if args.features:  # the counted features of an earlier run (calibration.json): only new rows are counted
        with open(args.features) as f:
            counted = json.load(f)["features"]
    features = calibrate.count_all(rows, args.cache or default_cache(), counted=counted)
    result = calibrate.calibrate(features)
    meta = _meta(argv, time.time() - start)
    meta["points_file"] = os.path.relpath(points_file, REPO)
    meta["perf_commit"] = _commit_of(os.path.join(REPO, "perf"))
    text = calibrate.markdown(result, meta)
    print(text)
    if args.write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "calibration.json"), "w") as f:
            json.dump({"meta": meta, **result, "features": features}, f, indent=1)
        with open(os.path.join(RESULTS, "calibration.md"), "w") as f:
            f.write(text)
        calibrate.plot(result, os.path.join(RESULTS, "calibration.png"))


def _model(args, argv):
    import triton_focal

    from . import report
    from .headline import all_cases, select
    from .run import run_model

    start = time.time()
    cases = select(all_cases(), args.cases, args.dtypes, args.headline)
    print(f"perf.model: {len(cases)} cases, triton_focal from {os.path.dirname(triton_focal.__file__)}", flush=True)
    results = run_model(
        cases,
        tree=os.path.abspath(args.tree) if args.tree else None,
        cache_dir=args.cache,
        compile_python=args.compile_python,
    )
    meta = _meta(argv, time.time() - start)
    if args.compile_python:
        from .machine_code import compiler_version

        meta["compiled_with"] = f"triton {compiler_version(args.compile_python)} ({args.compile_python})"
    meta["triton_focal_commit"] = _commit_of(os.path.dirname(triton_focal.__file__))
    for r in results:
        r.update(meta)
    print(report.markdown(results))
    print(f"perf.model: {meta['seconds']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if args.write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "model.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(RESULTS, "model.md"), "w") as f:
            f.write(
                "# perf.model: the kernels' modeled H100 cost (no GPU; a model, not a measurement)\n\n"
                f"`{meta['command']}` (triton_focal at {meta['triton_focal_commit']}), triton {meta['triton']}, "
                f"torch {meta['torch']}, {meta['seconds']:.0f} s on this machine"
                + (f"; the kernels compiled by {meta['compiled_with']}" if "compiled_with" in meta else "")
                + ".\n\n"
                "## The forward + `loss.backward()` cases\n\n"
                + report.summary_table(results)
                + "\n## Every case\n\n"
                + report.markdown(results)
            )
        report.plot(results, os.path.join(RESULTS, "model.png"))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m perf.model",
        description=PACKAGE_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--cases", default="", help="comma-separated parts of case names (seg, vocab, det, ...)")
    ap.add_argument("--dtypes", default="", help="bf16,fp32")
    ap.add_argument("--headline", action="store_true", help="only the bf16 loss.backward() targets")
    ap.add_argument("--tree", help="model the triton_focal of another checkout (e.g. a git worktree)")
    ap.add_argument("--out", help="write the JSON here (with --measure: a folder for measured.json and measured.md)")
    ap.add_argument("--write", action="store_true", help="write the results under perf/results/model/")
    ap.add_argument("--calibrate", action="store_true", help="model the measured points and fit the constants")
    ap.add_argument(
        "--compare",
        metavar="DIR",
        help="write DIR/model_vs_measured.md: the launches of DIR/measured.json beside the model's",
    )
    ap.add_argument(
        "--measure",
        action="store_true",
        help="time the cases on the CUDA device and check them against the reference (needs --out DIR)",
    )
    ap.add_argument("--points", help="with --calibrate: a CSV of measured points (default perf/calibration/points.csv)")
    ap.add_argument("--features", help="with --calibrate: reuse the counted features of an earlier calibration.json")
    ap.add_argument("--cache", help="directory caching the compiled kernels' summaries")
    ap.add_argument(
        "--compile-python",
        help="compile with this interpreter's Triton (a venv with the Triton a GPU runs); counting runs here",
    )
    ap.add_argument("--compile-worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--count-points", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tree:  # before triton_focal is imported; ahead of the working directory
        sys.path.insert(0, os.path.abspath(args.tree))
    if args.compile_worker:
        from .machine_code import _compile_worker

        _compile_worker(*args.compile_worker)
        return
    if args.compare:
        from .compare import write

        command = "python -m perf.model " + " ".join(argv if argv is not None else sys.argv[1:])
        print(write(args.compare, command.strip()))
        return
    if args.measure:  # on the GPU: the kernels compiled, not interpreted
        from .headline import all_cases, select
        from .measure import measure

        if not args.out:
            ap.error("--measure writes measured.json and measured.md into --out DIR")
        measure(select(all_cases(), args.cases, args.dtypes, args.headline), args.out)
        return
    os.environ["TRITON_INTERPRET"] = "1"
    if args.count_points:
        from .calibrate import _count_worker

        _count_worker(*args.count_points)
        return
    if args.calibrate:
        _calibrate(args, argv)
    else:
        _model(args, argv)


if __name__ == "__main__":
    main()
