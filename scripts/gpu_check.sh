#!/usr/bin/env bash
# The prepared device check for issue #5, to run on a lent GPU machine (writes under ${OUT:-runs/gpu}):
#   bash scripts/gpu_check.sh tests     # tests/test_cuda.py: the CUDA path itself (estimated 3 min)
#   bash scripts/gpu_check.sh measure   # the figures for the README (estimated 7 min):
#     1. ~4,600 generated COCO-size (640x480) train-list images, as on real COCO;
#     2. the benchmark on them at batch 2048, 224 px (pipeline, training vs model-only ceiling, memory);
#     3. the full default 70-epoch run on them (random init: no download there), timed,
#        cache build included.
#   bash scripts/gpu_check.sh           # both in one call (estimated 10 min: near a device call's limit)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
STAGE=${1:-all}
[[ $STAGE =~ ^(tests|measure|all)$ ]] || { echo "usage: $0 [tests|measure|all]" >&2; exit 2; }
mkdir -p "$OUT"
W=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

if [[ $STAGE == tests || $STAGE == all ]]; then
    # a failure here is a finding to record, not a reason to skip the measurements
    timeout 300 python -m pytest -q -rs tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt" || true
fi
if [[ $STAGE == measure || $STAGE == all ]]; then
    python -m coco4.devtools.synthetic --root "$OUT/coco" --num-train 7000 --num-val 260 --coco-size
    python annotation_prepare.py --coco-root "$OUT/coco" --out-dir "$OUT/data" | tee "$OUT/prepare.txt"
    python -m coco4.bench --device cuda --batch-size 2048 --epochs 2 --train-steps 5 --workers "$W" \
        --list "$OUT/data/annotation_train.txt" --images "$OUT/coco/images/train2017" \
        --work-dir "$OUT/bench" --json "$OUT/bench.json" | tee "$OUT/bench.txt"
    start=$(date +%s)
    python train.py --coco-root "$OUT/coco" --data-dir "$OUT/data" --output-dir "$OUT/ckpt" \
        --weights none --batch-size 2048 --workers "$W" 2>&1 | grep -v "step/s" | tee "$OUT/train.txt"
    echo "70-epoch run, cache build included: $(( $(date +%s) - start )) s" | tee -a "$OUT/train.txt"
    cp "$OUT/ckpt/metrics.csv" "$OUT/metrics.csv"
fi
