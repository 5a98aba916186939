#!/usr/bin/env bash
# The GPU checks, run from the repository root on a GPU machine, in one go:
# 1. the `gpu`-marked tests of tests/unit/test_gpu.py (bf16 compiled training and its resume to
#    float rounding, DDIM sampling in bf16 with compiled blocks against eager,
#    DistributedDataParallel on one GPU): about 2 minutes on an H200; stopped after 280 s;
# 2. the model benchmarks on CUDA (issue 33 item 3), each printing step time, images/s, the
#    analytic FLOPs per image and MFU against the bf16 matmul peak it measures first:
#    train_step.py, L/256 batch 32, eager then compiled blocks, 3 rounds (estimated 1.5 min:
#    ~40 s of it compiling three models; stopped after 130 s) and sampling.py, L/256 DDIM-50 +
#    CFG, 16 images, eager then compiled, 1 round (estimated 1.5 min; stopped after 130 s).
#    GPU_CHECK_BENCH=0 leaves them out.
# About 5 minutes in all (estimated; the tests' 2 minutes were measured); 9 minutes at most,
# inside one 10-minute device command. Each part prints as it goes, so a part stopped at its
# limit still leaves what it measured in the log.
#
# Python: .venv/bin/python where a virtual environment came along and its torch sees CUDA (the
# project's own .venv holds the CPU wheel), else the system python3; nothing is installed. The
# tests need torch with CUDA, numpy, pandas, scipy, nibabel and pytest; the benchmarks only torch
# and numpy, so they run even where the tests cannot be imported.
#
# With $OUT set, the log (gpu_check.log) and the JUnit report (gpu_junit.xml) are written there.
# Exit status: pytest's; 3 = no Python whose torch sees CUDA; 4 = the tests cannot be imported;
# 5 = the tests passed but a benchmark failed or was stopped at its limit.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail

out="${OUT:-}"

has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    >/dev/null 2>&1; }

main() {
py=""
for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && has_cuda "$candidate"; then
        py="$candidate"
        break
    fi
done
if [[ -z "$py" ]]; then
    echo "gpu_check: no Python here has torch with CUDA (tried .venv/bin/python, python3, python)"
    return 3
fi

echo "gpu_check: using $(command -v "$py")"
"$py" - <<'EOF'
import importlib
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
for name in ("triton", "numpy", "pandas", "scipy", "nibabel", "pytest"):
    try:
        print(f"  {name} {importlib.import_module(name).__version__}")
    except Exception as err:  # ImportError, or a broken install
        print(f"  {name}: MISSING ({type(err).__name__}: {err})")
EOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
echo "  C compiler: $(command -v cc || command -v gcc || echo 'none (torch.compile will fall back)')"

if ! "$py" -c "import tests.unit.test_gpu"; then
    echo "gpu_check: the tests cannot be imported with $py (a missing package above?)"
    rc=4
else
    # No -x: one run should report all three checks, failures included.
    junit=()
    [[ -n "$out" ]] && junit=(--junitxml "$out/gpu_junit.xml")
    start=$SECONDS
    timeout --signal=INT --kill-after=15 280 \
        "$py" -m pytest -m gpu tests/unit/test_gpu.py -q -rA -p no:cacheprovider ${junit[@]+"${junit[@]}"}
    rc=$?
    echo "gpu_check: pytest exit status $rc after $((SECONDS - start)) s"
fi

if [[ "${GPU_CHECK_BENCH:-1}" != 0 ]]; then
    bench_rc=0
    bench 130 benchmarks/train_step.py --device cuda --configs L/256:32 --rounds 3 --compile \
        || bench_rc=$?
    bench 130 benchmarks/sampling.py --device cuda --preset L/256 --images 16 --rounds 1 \
        --compile || bench_rc=$?
    if [[ "$rc" == 0 && "$bench_rc" != 0 ]]; then
        rc=5
    fi
fi
return "$rc"
}

# bench LIMIT SCRIPT ARGS...: one benchmark, stopped after LIMIT seconds; the allocator's
# expandable segments keep three L/256 models' steps from fragmenting the GPU's memory.
bench() {
    local limit=$1 start=$SECONDS status
    shift
    echo "gpu_check: $*"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 \
        timeout --signal=INT --kill-after=15 "$limit" "$py" "$@"
    status=$?
    echo "gpu_check: $1 exit status $status after $((SECONDS - start)) s"
    return "$status"
}

if [[ -n "$out" ]]; then
    mkdir -p "$out"
    main 2>&1 | tee "$out/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
