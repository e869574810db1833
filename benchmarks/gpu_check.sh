#!/usr/bin/env bash
# The GPU check in one go: every CUDA test, the CPU tests most likely to differ on another torch
# version, the fp16 training benchmark and the CUDA optimizer-step benchmark. Writes the pytest
# reports, logs and benchmark JSON (GPU name, torch and CUDA versions inside) to OUT_DIR.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Missing Python packages are installed from wheels in .whl/ (an ignored folder) when the
# interpreter lacks fastai; make them on a machine with pip and network access with
#   bash benchmarks/gpu_check.sh --download 3.12
# Without CUDA every CUDA test skips and the benchmarks run their small CPU mode, so the whole
# script can be rehearsed on a CPU machine. Budget on the GPU: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

# The packages the GPU image lacks (it has torch, timm, numpy, pandas, scikit-learn, matplotlib,
# pytest, pytest-timeout). Pinned to what the test extra resolves to on the CPU machine.
WHEELS=(fastai==2.8.12 fastcore==2.2.41 fastprogress==1.0.5 fasttransform==0.0.5
        plum-dispatch==2.9.0 beartype optuna==5.0.0 alembic sqlalchemy colorlog Mako greenlet
        mnist1d iterative-stratification platformdirs fastdownload
        ranger-adabelief==0.1.0 sam-pytorch==0.0.1)

if [[ "${1:-}" == "--download" ]]; then
    py="${2:-3.12}"
    mkdir -p .whl
    for w in "${WHEELS[@]}"; do
        python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$w" || exit 1
    done
    du -sh .whl
    exit 0
fi

OUT_DIR="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}

if ! "$PY" -c "import fastai, optuna" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "error: fastai is missing and .whl/ is empty"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fasttricks-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/fasttricks-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' | tee "$OUT_DIR/versions.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF

status=0
# the suite's addopts run notebooks through nbmake, which the GPU image lacks
PYTEST=("$PY" -m pytest -p no:cacheprovider -o "addopts=-ra --strict-markers" -q)

echo "== CUDA tests"
"${PYTEST[@]}" -m cuda tests --junitxml="$OUT_DIR/pytest_cuda.xml" 2>&1 \
    | tee "$OUT_DIR/pytest_cuda.log" || status=1

echo "== CPU tests most likely to differ on this torch version"
"${PYTEST[@]}" -m "not cuda and not postgres" tests/test_optim.py tests/test_optim_fastai.py \
    tests/test_losses.py tests/test_callbacks_sam.py --junitxml="$OUT_DIR/pytest_cpu.xml" 2>&1 \
    | tee "$OUT_DIR/pytest_cpu.log" || status=1

echo "== fp16 training throughput"
"$PY" benchmarks/gpu_fp16.py --out "$OUT_DIR/gpu_fp16.json" 2>&1 | grep -v -i warn || status=1

echo "== optimizer step (the CUDA section; a short CPU run where there is no GPU)"
if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    OPTIM_ARGS=(--device cuda --reps 11)
else
    OPTIM_ARGS=(--device cpu --reps 3)
fi
"$PY" benchmarks/optim_step.py "${OPTIM_ARGS[@]}" --out "$OUT_DIR" 2>&1 | grep -v -i warn \
    || status=1

exit $status
