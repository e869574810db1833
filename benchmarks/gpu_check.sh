#!/usr/bin/env bash
# The GPU check in one go: every CUDA test, the CPU tests most likely to differ on another torch
# version, the fp16 training benchmark, the CUDA optimizer-step benchmark (compiled rows
# included) and the image loader with its augmentation on the GPU. Writes the pytest reports,
# logs, step timings and benchmark JSON (GPU name, torch and CUDA versions inside) to OUT_DIR.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Missing Python packages are installed from wheels in .whl/ (an ignored folder; WHL_DIR to use
# another) when the interpreter lacks fastai; make them on a machine with pip and network with
#   bash benchmarks/gpu_check.sh --download 3.12
# Without CUDA every CUDA test skips and the benchmarks run their small CPU mode, so the whole
# script can be rehearsed on a CPU machine. Budget on the GPU: under 8 minutes (see GPU.md).
set -uo pipefail
cd "$(dirname "$0")/.."

# What the project needs beyond the GPU image (Python 3.12 with torch, timm, numpy, pandas,
# scikit-learn, scipy, matplotlib, pillow, pyyaml, pytest, pytest-timeout), pinned to the
# versions installed with the test extra on the CPU machine. Not carried: spacy (fastai.text
# only), psycopg2 and mlflow (their tests import them lazily and skip), nbmake (notebooks).
WHEELS=(fastai==2.8.12 fastcore==2.2.41 fastprogress==1.0.5 fasttransform==0.0.5
        fastdownload==0.0.8 plum-dispatch==2.9.0 beartype==0.23.1
        optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
        mnist1d==0.0.2.post1 iterative-stratification==0.1.9 platformdirs==4.14.9
        ranger-adabelief==0.1.0 sam-pytorch==0.0.1)
# Needed too, but usually on the image already: installed only where missing, so the image's
# own copies are not shadowed.
IF_MISSING=(rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 requests==2.34.2 urllib3==2.7.0
            certifi==2026.10.19.post1 charset-normalizer==3.4.7 markupsafe==3.0.3)
WHL_DIR="${WHL_DIR:-.whl}"

if [[ "${1:-}" == "--download" ]]; then
    py="${2:-3.12}"
    mkdir -p "$WHL_DIR"
    for w in "${WHEELS[@]}" "${IF_MISSING[@]}"; do
        python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d "$WHL_DIR" "$w" || { echo "error: no wheel for $w"; exit 1; }
    done
    ls "$WHL_DIR"/*.whl | wc -l
    du -sh "$WHL_DIR"
    exit 0
fi

OUT_DIR="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR | --download PYTHON_VERSION}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
T0=$SECONDS
: >"$OUT_DIR/timings.txt"
step() {  # step NAME LIMIT_S COMMAND...: run, log to OUT_DIR/NAME.log, record its seconds
    local name=$1 limit=$2 t=$SECONDS rc
    shift 2
    [[ $CUDA == 1 ]] || limit=$((4 * limit))  # the limits are the GPU's; a CPU is slower
    echo "== $name (at most ${limit}s)"
    timeout -k 10 "$limit" "$@" 2>&1 \
        | grep -v -E "warnings\.warn\(|FutureWarning|UserWarning" | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    [[ $rc == 124 || $rc == 137 ]] && echo "error: $name ran past ${limit}s"
    echo "$name $((SECONDS - t))s rc=$rc" | tee -a "$OUT_DIR/timings.txt"
    [[ $rc == 0 ]] || status=1
}

if ! "$PY" -c "import fastai, optuna" 2>/dev/null; then
    ls "$WHL_DIR"/*.whl >/dev/null 2>&1 \
        || { echo "error: fastai is missing and $WHL_DIR/ has no wheels"; exit 2; }
    names=()
    for w in "${WHEELS[@]}"; do names+=("${w%%==*}"); done
    for w in "${IF_MISSING[@]}"; do
        "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "${w%%==*}" \
            2>/dev/null || names+=("${w%%==*}")
    done
    files=()
    for n in "${names[@]}"; do  # wheel file names spell the project with _ for - . and case
        f=$(ls "$WHL_DIR"/*.whl | grep -i -E "/${n//[-_.]/[-_.]}-[0-9]" | head -1)
        [[ -n $f ]] || { echo "error: no wheel for $n in $WHL_DIR/"; exit 2; }
        files+=("$f")
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fasttricks-site "${files[@]}" || exit 2
    export PYTHONPATH="/tmp/fasttricks-site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed ${#files[@]} wheels in $((SECONDS - T0))s" | tee -a "$OUT_DIR/timings.txt"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' | tee "$OUT_DIR/versions.txt"
import platform, torch, fastai, optuna, timm
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "fastai", fastai.__version__,
      "optuna", optuna.__version__, "timm", timm.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
CUDA=0
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && CUDA=1

status=0
# the suite's addopts run notebooks through nbmake, which the GPU image lacks
PYTEST=("$PY" -m pytest -p no:cacheprovider -o "addopts=-ra --strict-markers" -q)

step pytest_cuda 150 "${PYTEST[@]}" -m cuda tests --junitxml="$OUT_DIR/pytest_cuda.xml"
[[ $CUDA == 1 ]] || grep -q -E "skipped" "$OUT_DIR/pytest_cuda.log" \
    || { echo "error: without CUDA every CUDA test should skip"; status=1; }

step pytest_cpu 90 "${PYTEST[@]}" -m "not cuda and not postgres and not slow" \
    tests/test_optim.py tests/test_optim_compiled.py tests/test_optim_fastai.py \
    tests/test_losses.py tests/test_callbacks_sam.py --junitxml="$OUT_DIR/pytest_cpu.xml"

step gpu_fp16 120 "$PY" benchmarks/gpu_fp16.py --out "$OUT_DIR/gpu_fp16.json"

# the optimizer step: resnet50 parameters on CUDA, compiled rows with their first-step (cold)
# compile cost; where there is no GPU a short CPU run of the eager rows
if [[ $CUDA == 1 ]]; then
    OPTIM_ARGS=(--device cuda --reps 11 --compile-cost inline)
else
    OPTIM_ARGS=(--device cpu --reps 1 --no-compile)
fi
step optim_step 180 "$PY" benchmarks/optim_step.py "${OPTIM_ARGS[@]}" --out "$OUT_DIR"

# the image loader with aug_transforms on the GPU (fasttricks and fastai); a tiny CPU run else
if [[ $CUDA == 1 ]]; then
    LOADER_ARGS=(--device cuda --per-class 100 --reps 2 --bs 128)
    LOADER_OUT=image_loader_cuda.json
else
    LOADER_ARGS=(--per-class 100 --reps 1 --workers 0)  # fewer: an empty test split
    LOADER_OUT=image_loader_cpu.json
fi
step image_loader 60 "$PY" benchmarks/image_loader.py "${LOADER_ARGS[@]}" \
    --out "$OUT_DIR/$LOADER_OUT"

echo "total $((SECONDS - T0))s status=$status" | tee -a "$OUT_DIR/timings.txt"
exit $status
