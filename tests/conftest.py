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


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        # Every test run on the compile backend compiles (seconds each on a CPU).
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "compile" or any(item.nodeid.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)


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
    """Each backend that runs here (``helpers.BACKENDS``); the compile cases are slow."""
    return request.param
