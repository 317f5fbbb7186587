#!/usr/bin/env bash
# The GPU check: one call of a few minutes on a machine with a CUDA GPU, run from the checkout
# with the machine's own torch and triton (nothing installed, nothing downloaded).
#
#   bash perf/gpu_check.sh            # results in perf/results/<device>/, the log beside them
#
# In order, each stage under its own time limit so that a slow one cannot starve the rest:
#   1. the GPU-only tests (python -m pytest -m gpu);
#   2. python -m perf.model --measure: every case the cost model predicts, timed at its
#      headline shape and checked against the float64 reference (measured.json / .md);
#   3. python -m perf.sweep --table: the four headline cases beside torch.compile and the
#      eager compositions (results.json / summary.md);
#   4. the kernel tests on the GPU (compiled kernels, not the interpreter), the compile
#      backend left to CI.
# RESULTS (default perf/results/<device>) may be a link to a folder elsewhere; LOG defaults to
# RESULTS/gpu_check.log.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=$(python3 -c "import torch; from perf.timing import slug; print(slug(torch.cuda.get_device_name(0)))") || {
    echo "gpu_check: no CUDA device visible to torch"
    exit 1
}
RESULTS=${RESULTS:-perf/results/$device}
mkdir -p "$RESULTS"
LOG=${LOG:-$RESULTS/gpu_check.log}
exec > >(tee "$LOG") 2>&1

stage() {  # stage SECONDS NAME COMMAND...: run it, say how long it took and how it ended
    local limit=$1 name=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    timeout -s INT -k 20 "$limit" "$@"  # SIGINT first: pytest still prints its summary
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s$( [ $rc = 124 ] || [ $rc = 130 ] && echo ' (time limit)')"
}

echo "gpu_check: $(date -u +%FT%TZ), commit ${COMMIT:-unknown}, results in $RESULTS"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"

stage 90 "GPU-only tests" python3 -m pytest -q -m gpu -p no:cacheprovider -rfE
stage 180 "model cases measured" python3 -m perf.model --measure --out "$RESULTS"
stage 150 "headline table" python3 -m perf.sweep --table --quick --no-plots --out "$RESULTS"
stage 110 "kernel tests on the GPU" python3 -m pytest -q -p no:cacheprovider -rfE -n 16 --timeout 60 \
    -m "not slow" -k "not compile" \
    tests/test_softmax_triton.py tests/test_sigmoid_triton.py tests/test_softmax_one_read.py \
    tests/test_softmax_options.py tests/test_launch_reductions.py tests/test_focal_family.py \
    tests/test_distribution_focal.py tests/test_memory.py tests/test_reliability_inputs.py \
    tests/test_large_vocab.py tests/test_fused_linear.py tests/test_focal_loss.py tests/test_sigmoid_focal_loss.py \
    tests/test_grad_policy.py tests/test_vocab_shard.py tests/test_persistent_grid.py tests/test_model_measure.py \
    tests/test_reliability.py tests/test_reliability_autograd.py tests/test_reliability_errors.py
echo "gpu_check: done after $SECONDS s"
