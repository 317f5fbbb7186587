"""Model a list of headline cases: count each, compile every launch once, apply the cost."""

import os
import tempfile
import time

from .capture import install_recorder
from .cost import model_case
from .headline import count_case
from .machine_code import compile_launches


def default_cache():
    return os.path.join(tempfile.gettempdir(), "perf-model-sass")


def run_model(cases, tree=None, cache_dir=None, log=print):
    """The result object of each case (``cost.model_case``)."""
    install_recorder()
    cache_dir = cache_dir or default_cache()
    counted = []
    for case in cases:
        t0 = time.time()
        counted.append((case, count_case(case)))
        log(f"  ran {case.name} ({time.time() - t0:.1f} s)")
    t0 = time.time()
    codes = compile_launches([launch for _, c in counted for launch in c.headline], cache_dir, tree=tree)
    log(f"  compiled {len(set(codes))} kernels for sm_90 ({time.time() - t0:.1f} s)")
    return [model_case(case, c, codes) for case, c in counted]
