"""Run the Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton_focal (and its kernels) are imported.
"""

import hashlib
import os
import pathlib
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _source_digest():
    package = pathlib.Path(__file__).resolve().parent.parent / "triton_focal"
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# Inductor's on-disk cache does not key on a custom op's fake implementation: a graph compiled
# against an earlier version of the package can assert the old output shapes. One cache per
# version of the package's sources keeps reruns warm and a change honest.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "triton_focal_inductor", _source_digest())
)

import pytest  # noqa: E402
from helpers import BACKENDS, DEVICE  # noqa: E402


@pytest.fixture
def device():
    return DEVICE


# Tests of 7 s or more each on a 2-core CPU that carry no "slow" mark in their own files,
# marked here so that `python -m pytest -m "not slow"` is the fast subset (README: tests).
# Node id prefix -> why it is slow.
SLOW = {
    "tests/test_model.py": "compiles the kernels for sm_90 and reads their machine code",
    "tests/test_kernels_build_for_sm90.py": "compiles every kernel for GPU targets",
    "tests/test_focal_loss.py::test_gradcheck[triton": "gradcheck through the Triton interpreter",
    "tests/test_distributed.py::test_matches_unsharded_loss": "starts gloo process groups",
    "tests/test_distributed.py::test_non_finite_logits": "starts gloo process groups",
    "tests/test_distributed.py::test_float32_shards": "starts gloo process groups",
    "tests/test_large_vocab.py::test_fused_head_peak_memory": "trains a model twice to compare peak memory",
    "tests/test_examples.py::test_train_": "trains the examples in subprocesses",
}


# The compile backend on a sample of a broad grid: ``@pytest.mark.compile_sample``.
#
# Why: on CI (2 CPU cores, no GPU, an empty Inductor cache) a compile-backend case that meets a
# new static configuration (reduction, optional terms, dtype, layout) is a cold torch.compile of
# seconds to tens of seconds, and the broad grids (alpha x gamma x reduction x ..., dozens of
# cases each) multiply those compilations. Each value needs its compile case; the combinations
# are the grid's job on the reference and the Triton kernels, which still run all of it, and
# test_compile_backend.py holds the compile backend to the reference on combined options.
#
# What: a test marked ``compile_sample`` runs the compile backend on the *diagonal* of its
# ``parametrize`` grid only: case j takes value ``j % n`` of each parameter (n: that
# parameter's number of values), for j < the largest n. Every value of every parameter meets
# the compile backend at least once (an edge value such as gamma = 0 or an empty shape keeps
# its compile case), the selection depends only on the grid (not on -k, -m or the order of
# collection), and the other backends' cases are untouched. The cases left out are reported
# as deselected. ``--full-compile-grid`` runs them all; a case named by its full node id on
# the command line always runs.
COMPILE_SAMPLE = "compile_sample"


def pytest_addoption(parser):
    parser.addoption(
        "--full-compile-grid",
        action="store_true",
        help=f"run the compile backend on the whole grid of the tests marked {COMPILE_SAMPLE!r}",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{COMPILE_SAMPLE}: run the compile backend on a covering diagonal of the test's parametrize grid "
        "(tests/conftest.py; --full-compile-grid runs all of it)",
    )


def _parametrize_names(mark):
    names = mark.args[0] if mark.args else mark.kwargs["argnames"]
    return [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)


def _grid_position(item):
    """For each ``parametrize`` of the test but the backend's: (the position of this case's value
    among that parametrize's values, their number). Found by identity, as pytest hands the test
    the very objects of the list (``callspec.indices`` numbers something else)."""
    params = item.callspec.params
    marks = list(item.iter_markers("parametrize"))
    not_a_grid = set(params) - {"backend"} - {name for mark in marks for name in _parametrize_names(mark)}
    if not_a_grid:
        raise pytest.UsageError(f"{item.nodeid}: {COMPILE_SAMPLE} samples parametrize grids, not {not_a_grid}")
    positions = {}
    for mark in marks:
        names = _parametrize_names(mark)
        if "backend" in names or names[0] in positions:
            continue
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs["argvalues"]
        for i, value in enumerate(values):
            if type(value).__name__ == "ParameterSet":  # pytest.param(...)
                value = value.values
            elif len(names) == 1:
                value = (value,)
            if all(params[name] is v for name, v in zip(names, value)):
                positions[names[0]] = (i, len(values))
                break
        else:
            raise pytest.UsageError(f"{item.nodeid}: {COMPILE_SAMPLE} cannot find this case's {names} among the values")
    return list(positions.values())


def _in_compile_sample(item):
    """Whether a compile-backend case of a ``compile_sample`` test is on its grid's diagonal."""
    axes = _grid_position(item)
    longest = max((size for _, size in axes), default=1)
    return any(all(index == j % size for index, size in axes) for j in range(longest))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    named = {arg.split("::", 1)[1] for arg in config.args if "::" in arg and "[" in arg}
    full_grid = config.getoption("full_compile_grid")
    kept, left_out = [], []
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        # Every test run on the compile backend compiles (seconds each on a CPU).
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "compile" or any(item.nodeid.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)
        if (
            params.get("backend") == "compile"
            and item.get_closest_marker(COMPILE_SAMPLE) is not None
            and not full_grid
            and item.nodeid.split("::", 1)[1] not in named
            and not _in_compile_sample(item)
        ):
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True)
def _compile_small_inputs(request, monkeypatch):
    """The compile backend runs tiny CPU inputs through the reference (compiled.EAGER_BELOW);
    the tests' inputs are tiny, and must exercise the compiled functions. A test marked
    ``real_eager_threshold`` keeps the threshold."""
    if "real_eager_threshold" not in request.keywords:
        from triton_focal import compiled

        monkeypatch.setattr(compiled, "EAGER_BELOW", 0)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend that runs here (``helpers.BACKENDS``); the compile cases are slow, and on a
    test marked ``compile_sample`` run on a covering sample of its grid (see above)."""
    return request.param
