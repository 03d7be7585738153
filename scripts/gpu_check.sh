#!/usr/bin/env bash
# The prepared device check (issue #11): one command, at most 8 minutes on a lent GPU machine.
#   bash scripts/gpu_check.sh          # on the GPU (estimated 6 min):
#     1. tests/test_cuda.py, the CUDA path itself (while ~6,200 COCO-size images are generated);
#     2. the benchmark at batch 2048, 224 px on the ~4,590 kept train-list images: the
#        pipelines, training against the model-only ceiling, --recipe modern's training
#        against the default's (#31: more than 5% slower there is a bug), peak GPU memory;
#     3. a timed 10-epoch run of the default recipe on them (random init: nothing can be
#        downloaded there), cache build included, extrapolated to 70 epochs; the later epochs'
#        spacing against their training seconds (#34: checkpoints now on a cadence).
#   bash scripts/gpu_check.sh smoke    # the same stages at tiny size on the CPU (a test runs it)
# Needs no pycocotools: the generator writes the lists itself. Each stage runs even when an
# earlier one failed; the exit status says whether all passed. Results, 7 small files, go to
# $OUT (default runs/gpu_check): gpu.txt, cuda_tests.txt, bench.json, bench.txt, train.txt,
# metrics.csv, summary.txt. Images, caches and checkpoints stay in a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
[[ $MODE =~ ^(gpu|smoke)$ ]] || { echo "usage: $0 [gpu|smoke]" >&2; exit 2; }
if [[ $MODE == gpu ]] && ! command -v nvidia-smi > /dev/null; then
    echo "$0: nvidia-smi not found, so there is no NVIDIA GPU (or no driver) to check here;" \
        "run it on a machine with one, or 'bash $0 smoke' for the stages on the CPU" >&2
    exit 2
fi
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-$(command -v python3 || command -v python)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
W=$(nproc)
if [[ $MODE == gpu ]]; then
    DEVICE=cuda GEN="--num-train 6200 --num-val 260 --coco-size" EPOCHS=10
    TEST_LIMIT=200 BENCH_LIMIT=140 TRAIN_LIMIT=100  # 440 s in all, and ~20 s more
    BENCH="--batch-size 2048 --image-size 224 --epochs 1 --train-steps 3"
    TRAIN="--batch-size 2048 --image-size 224"
else
    DEVICE=cpu GEN="--num-train 60 --num-val 20" EPOCHS=2 W=0
    TEST_LIMIT=120 BENCH_LIMIT=120 TRAIN_LIMIT=120
    BENCH="--batch-size 8 --image-size 32 --epochs 1 --train-steps 1"
    TRAIN="--batch-size 8 --image-size 32"
fi
: > "$OUT/summary.txt"
status=0
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
errors() {  # errors FILE: a failed command's last lines, progress bars left out
    tr '\r' '\n' < "$1" | grep -v -E "[0-9]+%\|" | tail -5
}
stage() {  # stage NAME COMMAND...: run it, note how it ended and how long it took
    local name=$1 start=$SECONDS
    shift
    if "$@"; then note "$name: ok, $((SECONDS - start)) s"
    else note "$name: FAILED (exit $?), $((SECONDS - start)) s"; status=1; fi
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no GPU"
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/gpu.txt" 2>&1

# the images are generated on the CPU while the GPU runs the tests
"$PY" -m coco4.synthetic --root "$WORK/coco" --lists "$WORK/data" $GEN \
    > "$WORK/generate.txt" 2>&1 &
generator=$!

cuda_tests() {
    timeout "$TEST_LIMIT" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
        > "$OUT/cuda_tests.txt" 2>&1
}
stage "cuda tests" cuda_tests

generate() { wait "$generator"; local rc=$?; tail -2 "$WORK/generate.txt"; return $rc; }
stage "generate images" generate
note "train list: $(wc -l < "$WORK/data/annotation_train.txt" 2>/dev/null || echo none) images"

bench() {
    timeout "$BENCH_LIMIT" "$PY" -m coco4.bench --device "$DEVICE" $BENCH --workers "$W" \
        --list "$WORK/data/annotation_train.txt" --images "$WORK/coco/images/train2017" \
        --work-dir "$WORK/bench" --json "$OUT/bench.json" > "$OUT/bench.txt" 2>"$WORK/bench.err"
    local rc=$?
    [[ $rc == 0 ]] || errors "$WORK/bench.err" >> "$OUT/bench.txt"
    return $rc
}
stage "benchmark" bench

timed_run() {
    # stdout holds the run's own lines (tqdm.write), stderr the progress bars: kept apart, no
    # epoch line shares a physical line with a bar; each line is stamped with the time it came
    PYTHONUNBUFFERED=1 timeout "$TRAIN_LIMIT" "$PY" train.py --coco-root "$WORK/coco" \
        --data-dir "$WORK/data" --output-dir "$WORK/run" --weights none --device "$DEVICE" \
        --epochs "$EPOCHS" --workers "$W" $TRAIN 2>"$WORK/train.err" \
        | "$PY" -u -c "import sys, time
for line in sys.stdin: print(f'{time.time():.2f} {line}', end='')" > "$OUT/train.txt"
    local rc=${PIPESTATUS[0]}
    [[ $rc == 0 ]] || errors "$WORK/train.err" >> "$OUT/train.txt"
    cp "$WORK/run/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
    return "$rc"
}
start=$(date +%s.%N)
stage "timed run" timed_run
"$PY" - "$OUT/train.txt" "$start" "$EPOCHS" "$OUT/metrics.csv" <<'EOF' | tee -a "$OUT/summary.txt"
import csv, re, sys
path, start, epochs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
stamps = [float(line.split()[0]) for line in open(path) if re.match(r"[\d.]+ epoch +\d+ \|", line)]
try:  # metrics.csv's seconds: the training steps alone
    trained = [float(row["seconds"]) for row in csv.DictReader(open(sys.argv[4]))]
except (OSError, KeyError, ValueError):
    trained = []
if len(stamps) == epochs >= 2:
    half = epochs // 2
    per_epoch = (stamps[-1] - stamps[half - 1]) / (epochs - half)
    steps = (f", {sum(trained[half:]) / (epochs - half):.2f} s of it training"
             if len(trained) == epochs else "")
    print(f"timed run: {stamps[-1] - start:.0f} s for {epochs} epochs, start-up and cache build "
          f"included; later epochs {per_epoch:.2f} s apart{steps} (the rest: validation, "
          f"checkpoints on --save-every's cadence, logs); "
          f"70 epochs: about {stamps[-1] - start + (70 - epochs) * per_epoch:.0f} s")
else:
    print(f"timed run: {len(stamps)} of {epochs} epoch lines found, no estimate")
EOF
note "gpu_check $MODE: $([[ $status == 0 ]] && echo all stages passed || echo some stage failed)"
exit $status
