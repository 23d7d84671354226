#!/usr/bin/env bash
# The one GPU call of issue 35 (item 3), prepared so that a session lent a GPU spends its device time on
# nothing else. From the repository root, with $OUT set (the device tool sets it), it runs in order:
#   tests  the CUDA tests (tests/test_cuda.py, and the mocked CUDA path of tests/test_gpu_path.py)
#   bench  python -m modular bench                                  -> $OUT/bench-cuda.json
#   bf16   24 epochs on the JPEG copy at seed 0 with their own range test, default precision (bf16 on an
#          H100)                                                     -> $OUT/jpeg-seed0-cuda-auto.{json,log}
#   fp16   the same with fp16 forced: the decision a T4 gets (compute capability 7.5), patched in the
#          process, since --precision has no fp16 value yet          -> $OUT/jpeg-seed0-cuda-fp16.{json,log}
# and prints a summary beside results/jpeg-seed0.json (the CPU record of the same data and seed). Each step has
# its own time limit inside one overall budget (GPU_CHECK_SECONDS, default 540 s, under the tool's 600 s), so what
# finished comes back even when a later step runs out of time; output is unbuffered, and everything is also in
# $OUT/gpu-check.log. Checkpoints and figures stay in $RUNS (default /tmp/gpu-check-runs): at most 8 files come
# back from $OUT, 16 MiB each.
#
# 1. Prepare, here (no device time): tools/gpu_check.sh --prepare
#    - downloads the wheels the device lacks into .whl/ (its image has torch, numpy, scipy, PyYAML, OpenCV,
#      matplotlib, tqdm, pytest; not albumentations and what it needs, torch-lr-finder or torchsummary):
#        pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl $WHEELS            (the list below: the versions requirements.txt pins, and the project's
#                                      .venv has for their dependencies; grad-cam is not needed by these steps)
#    - copies ../shared/data/cifar10-jpeg.tar.gz into .gpu/ (only the repository travels to the device) and
#      writes .gpu/commit.txt (no .git travels: the records will name no commit, this file does);
#    - .whl/ and .gpu/ are in .gitignore, so they travel only when the call names them in carry; it prints
#      their size: with the tracked files it must stay under the 64 MiB that travels (about 45 MB in all).
# 2. Run it on the device, one call: command "tools/gpu_check.sh", carry [".whl", ".gpu"], timeout_s 570.
#    A rerun of one part: "tools/gpu_check.sh --only fp16" (tests, bench, bf16, fp16; comma-separated).
# 3. Try it on the CPU first, tiny (minutes; the CUDA tests skip, fp16 cannot be forced there):
#      OUT=/tmp/gpu-check PYTHON=.venv/bin/python nice -n 10 tools/gpu_check.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS="albumentations==2.0.8 albucore==0.0.24 stringzilla==5.3.2 simsimd==6.5.16 pydantic==2.14.4
pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
torch-lr-finder==0.2.2 torchsummary==1.5.1"
TARBALL=.gpu/cifar10-jpeg.tar.gz
PY=${PYTHON:-python3}
MODE=gpu
STEPS=tests,bench,bf16,fp16
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --smoke) MODE=smoke ;;
        --only) STEPS=$2; shift ;;
        *) echo "usage: tools/gpu_check.sh [--prepare | --smoke] [--only tests,bench,bf16,fp16]" >&2; exit 2 ;;
    esac
    shift
done

if [ "$MODE" = prepare ]; then
    set -e
    # shellcheck disable=SC2086  # one argument per wheel
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
    mkdir -p .gpu
    install -m 644 ../shared/data/cifar10-jpeg.tar.gz "$TARBALL"
    { git rev-parse HEAD; git status --porcelain | sed 's/^/  changed: /'; } > .gpu/commit.txt
    { git check-ignore -q .whl && git check-ignore -q .gpu; } || { echo "error: .whl/ and .gpu/ must be ignored (.gitignore)" >&2; exit 1; }
    du -ch .whl .gpu | tail -1
    echo "with the tracked files: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked" \
         "+ $(du -cb .whl .gpu | tail -1 | cut -f1) carried (limit 67108864)"
    exit 0
fi

: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
RUNS=${RUNS:-/tmp/gpu-check-runs}
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-540}))
FAILED=""

say() { echo "[gpu-check +$(($(date +%s) - START)) s] $*"; }
wanted() { [[ ",$STEPS," == *",$1,"* ]]; }
# run_step NAME LIMIT COMMAND...: COMMAND under `timeout`, its limit cut to what is left of the budget
run_step() {
    local name=$1 limit=$2 left
    shift 2
    left=$((DEADLINE - $(date +%s) - 5))
    if [ "$left" -lt 30 ]; then say "$name: skipped, ${left} s left of the budget"; FAILED="$FAILED $name"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: start (limit ${limit} s)"
    timeout --kill-after=15 "$limit" "$@"
    local status=$?
    say "$name: exit $status$([ $status -eq 124 ] && echo ', out of time')"
    [ $status -eq 0 ] || FAILED="$FAILED $name"
}

if [ "$MODE" = smoke ]; then
    DEVICE=cpu
    BENCH_ARGS=(--batch-size 16 --repeats 1 --min-seconds 0.2)
    TRAIN_ARGS=(--subset 500 --test-subset 200 --epochs 1 --batch-size 50 --lr-find-iters 20)
    LIMITS=(300 300 300 300)
else
    DEVICE=cuda
    BENCH_ARGS=(--repeats 3)
    TRAIN_ARGS=()
    LIMITS=(120 120 200 200)
    if compgen -G ".whl/*.whl" >/dev/null; then  # the device tool's way: into /tmp/site, ahead on the path
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { say "the wheels did not install"; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
say "mode $MODE, steps $STEPS, budget $((DEADLINE - START)) s; code: $(head -1 .gpu/commit.txt 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch, albumentations, torch_lr_finder; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'albumentations', albumentations.__version__, 'cores', len(__import__('os').sched_getaffinity(0)))" || exit 1
[ -f "$TARBALL" ] || { say "no $TARBALL: run tools/gpu_check.sh --prepare here first, and carry .gpu"; exit 1; }

if wanted tests; then  # -o addopts=: pyproject's nbval options need a plugin the device lacks
    run_step tests "${LIMITS[0]}" bash -c "set -o pipefail; '$PY' -m pytest -q -rs -p no:cacheprovider -o addopts= \
        tests/test_cuda.py tests/test_gpu_path.py 2>&1 | tee '$OUT/cuda-tests.log'"
fi
if wanted bench; then
    run_step bench "${LIMITS[1]}" "$PY" -m modular bench --device "$DEVICE" --output-dir "$OUT" "${BENCH_ARGS[@]}"
fi
# train TAG PYTHON-ARGS...: one 24-epoch run (range test included) on the JPEG copy at seed 0
train() {
    local tag=$1 limit=$2
    shift 2
    rm -rf "${RUNS:?}/$tag"
    run_step "$tag" "$limit" bash -c 'set -o pipefail; "$@" 2>&1 | tee "$0"' "$OUT/jpeg-seed0-$DEVICE-$tag.log" \
        "$@" train --data-dir "$TARBALL" --seed 0 --device "$DEVICE" --output-dir "$RUNS/$tag" "${TRAIN_ARGS[@]}"
    [ -f "$RUNS/$tag/run.json" ] && cp "$RUNS/$tag/run.json" "$OUT/jpeg-seed0-$DEVICE-$tag.json"
}
if wanted bf16; then
    train auto "${LIMITS[2]}" "$PY" -m modular
fi
if wanted fp16; then  # the precision a T4 gets, forced: select_runtime asks cuda_autocast_dtype, patched here
    train fp16 "${LIMITS[3]}" "$PY" -c 'import sys, torch
from modular import device
device.cuda_autocast_dtype = lambda capability: torch.float16  # as for compute capability 7.5 (a T4)
from modular.tools.cli import main
sys.exit(main(sys.argv[1:]))'
fi

say "summary"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cpu = json.loads(Path("results/jpeg-seed0.json").read_text())
for path in sorted(out.glob("bench-*.json")):
    b = json.loads(path.read_text())
    print(f"{path.name}: step {b['train_images_per_s']:,.0f} img/s ({b['path']}), data pipeline "
          f"{b['data_images_per_s']:,.0f} img/s with {b['data_workers']} workers, limited by the {b['limited_by']}")
for path in sorted(out.glob("jpeg-seed0-*.json")):
    r = json.loads(path.read_text())
    print(f"{path.name}: {r['test_acc']:.2f}% at epoch {len(r['history'])} ({r['precision']}, {r['hardware']}), "
          f"CPU record {cpu['test_acc']:.2f}% ({r['test_acc'] - cpu['test_acc']:+.2f}); LRMAX {r['lr_max']:.4g} "
          f"(CPU {cpu['lr_max']:.4g}); wall {r['wall_seconds']:.0f} s, {r['seconds_per_epoch']:.1f} s an epoch")
EOF
say "done; failed:${FAILED:- none}"
[ -z "$FAILED" ]
