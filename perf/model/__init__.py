"""``python -m perf.model``: what the kernels would cost on an H100, read from their machine code
on a machine without a GPU, with constants calibrated on measured H100 times. A model, not a
measurement.

For every headline case it

1. runs the public API (``backend="triton"``, forward + backward) under ``TRITON_INTERPRET=1``
   twice: at the headline shape, where every launch is captured and not executed, and at a
   scaled-down shape with the same launch configuration, where the interpreter executes and
   counts (``capture.py``); a dispatch mode counts the torch ops around the kernels;
2. compiles every captured launch for sm_90 exactly as the JIT would and reads the SASS:
   registers, spills, occupancy, the dynamic warp and MUFU instructions, and the dependent
   memory rounds per program (``machine_code.py``, ``perf/sass.py``);
3. models each launch's time (``cost.py``) with the device of ``device.py``, whose fixed cost
   per launch, latency per round and issue factor are fitted by ``--calibrate`` on measured
   H100 times of other projects' Triton kernels (``calibrate.py``, ``perf/calibration/``);
4. compares with the floor (read the logits once, the targets once, write the gradient once),
   at the fitted constants and at the pessimistic end: the worst over the leave-one-family-out
   fits and, where a re-read is near the L2 boundary, over hit and miss.

    python -m perf.model                     # print the table; writes nothing
    python -m perf.model --write             # also write perf/results/model/{model.json,model.md,model.png}
    python -m perf.model --cases seg,det --dtypes bf16
    python -m perf.model --calibrate         # model the measured points, fit, print the errors
    python -m perf.model --calibrate --write # also write perf/results/model/calibration.{md,json,png}
    python -m perf.model --calibrate --points FILE   # any CSV of the points' schema
"""

from .capture import Counted, Workload, count_workload, install_recorder, recording
from .cost import dram_load_bytes, l2_uncertain, model_case, model_counted
from .device import DEVICE, DeviceModel
from .headline import Case, all_cases, count_case, select
from .machine_code import compile_launches, dynamic_counts, spec_key
from .run import run_model

__all__ = [
    "DEVICE",
    "Case",
    "Counted",
    "DeviceModel",
    "Workload",
    "all_cases",
    "compile_launches",
    "count_case",
    "count_workload",
    "dram_load_bytes",
    "dynamic_counts",
    "install_recorder",
    "l2_uncertain",
    "model_case",
    "model_counted",
    "recording",
    "run_model",
    "select",
    "spec_key",
]
