"""Model a list of headline cases: count each, compile every launch once, apply the cost."""

import os
import tempfile
import time

from .capture import install_recorder, tensor_values
from .cost import model_case
from .headline import count_case, run_case
from .machine_code import compile_cache_dir, compile_launches, spec_key


def default_cache():
    return os.path.join(tempfile.gettempdir(), "perf-model-sass")


def install_footprints(launches, codes):
    """Each compiled launch's registers, where the launchers look for them under the interpreter
    (``triton_focal.ops.launch.STAND_IN_FOOTPRINTS``): the grid is then the one a GPU gets, sized
    by the same compiled kernel the model reads."""
    from triton_focal.ops import launch as grid

    for launch in launches:
        code = codes[spec_key(launch)]
        meta = {name: value for name, value in launch.args if name in launch.constexpr_names}
        meta.update(launch.options)
        dtypes = [t[1] for _, value in launch.args for t in tensor_values(value)]
        grid.STAND_IN_FOOTPRINTS[grid.footprint_key(launch.qualname, dtypes, meta)] = grid.Footprint(
            code["registers"], code["num_warps"], code["shared_bytes"]
        )


def run_model(cases, tree=None, cache_dir=None, log=print, compile_python=None):
    """The result object of each case (``cost.model_case``).

    Two rounds: the headline launches are captured and compiled first, so that the launchers
    size their grids from the compiled kernels' registers, as on a GPU; then each case is
    counted with those grids. ``compile_python``: compile with that interpreter's Triton
    (counting still runs here)."""
    install_recorder()
    cache_dir = compile_cache_dir(cache_dir or default_cache(), compile_python)
    t0 = time.time()
    first = [launch for case in cases for launch in run_case(case, headline=True)[0]]
    install_footprints(first, compile_launches(first, cache_dir, tree=tree, python=compile_python))
    log(f"  sized the grids from {len(first)} compiled launches ({time.time() - t0:.1f} s)")
    counted = []
    for case in cases:
        t0 = time.time()
        counted.append((case, count_case(case)))
        log(f"  ran {case.name} ({time.time() - t0:.1f} s)")
    t0 = time.time()
    codes = compile_launches(
        [launch for _, c in counted for launch in c.headline], cache_dir, tree=tree, python=compile_python
    )
    log(f"  compiled {len(set(codes))} kernels for sm_90 ({time.time() - t0:.1f} s)")
    return [model_case(case, c, codes) for case, c in counted]
