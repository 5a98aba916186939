#!/usr/bin/env bash
# The GPU checks, run from the repository root on a GPU machine: the `gpu`-marked tests of
# tests/unit/test_gpu.py (bf16 compiled training and its resume to float rounding, DDIM sampling in bf16
# with compiled blocks against eager, DistributedDataParallel on one GPU). About 2 minutes on
# an H200; stopped after 280 s.
#
# Python: .venv/bin/python where a virtual environment came along and its torch sees CUDA (the
# project's own .venv holds the CPU wheel), else the system python3; nothing is installed. It
# needs torch with CUDA, numpy, pandas, scipy, nibabel and pytest.
#
# With $OUT set, the log (gpu_check.log) and the JUnit report (gpu_junit.xml) are written there.
# Exit status: pytest's; 3 = no Python whose torch sees CUDA; 4 = the tests cannot be imported.
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
    return 4
fi

# No -x: one run should report all three checks, failures included.
junit=()
[[ -n "$out" ]] && junit=(--junitxml "$out/gpu_junit.xml")
start=$SECONDS
timeout --signal=INT --kill-after=15 280 \
    "$py" -m pytest -m gpu tests/unit/test_gpu.py -q -rA -p no:cacheprovider ${junit[@]+"${junit[@]}"}
rc=$?
echo "gpu_check: pytest exit status $rc after $((SECONDS - start)) s"
return "$rc"
}

if [[ -n "$out" ]]; then
    mkdir -p "$out"
    main 2>&1 | tee "$out/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
