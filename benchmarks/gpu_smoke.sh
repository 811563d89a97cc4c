#!/usr/bin/env bash
# GPU smoke run of the two full-size SA++ pipelines: a few hundred optimizer
# steps of `sapp-imagenet` (torchvision ResNet-50, 224 px, bf16 autocast) and `sapp-criteo` (the
# paper's MLP with 26 x 1M-row embedding tables, batch 32768, bf16 autocast) on generated data in
# the real on-disk formats, then one JSON line with the measured throughput.
#
#   bash benchmarks/gpu_smoke.sh            # needs CUDA; about 5-8 minutes on one H100
#   ALLOW_CPU=1 IMNET_STEPS=42 CRITEO_STEPS=30 IMNET_BATCH=8 CRITEO_BATCH=256 CRITEO_ROWS=5000 \
#     IMNET_CLASSES=4 IMNET_PER_CLASS=4 bash benchmarks/gpu_smoke.sh   # dry run of the script logic on a CPU
#
# Throughput = images (rows) per second of training time, i.e. wall time minus evaluation and
# checkpoint writing, with the real data loaders (JPEG decoding, TSV parsing) in the loop. Nothing is
# written to results/: the runs use a scratch folder (and PRUNINGLAB_RESULTS points into it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
IMNET_STEPS=${IMNET_STEPS:-200}
IMNET_BATCH=${IMNET_BATCH:-256}
IMNET_CLASSES=${IMNET_CLASSES:-100}
IMNET_PER_CLASS=${IMNET_PER_CLASS:-26}
CRITEO_STEPS=${CRITEO_STEPS:-300}
CRITEO_BATCH=${CRITEO_BATCH:-32768}
CRITEO_ROWS=${CRITEO_ROWS:-2000000}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
export PRUNINGLAB_RESULTS="$WORK/results" PRUNINGLAB_RUNS="$WORK/runs" PRUNINGLAB_PROGRESS=0
SCALE=full
DEVICE=cuda
if [ "${ALLOW_CPU:-0}" = "1" ]; then DEVICE=cpu; else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke: CUDA is not available')"
fi
$PY -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)"
echo "scratch: $WORK  workers: $WORKERS  load: $(cat /proc/loadavg)"

t0=$(date +%s)
$PY -m pruninglab make-imagefolder "$WORK/imagenet" --classes "$IMNET_CLASSES" --per-class "$IMNET_PER_CLASS" \
  --val-per-class 2 --size 256
$PY -m pruninglab make-criteo "$WORK/criteo/train.txt" --rows "$CRITEO_ROWS" --seed 0
echo "data generated in $(( $(date +%s) - t0 )) s"

$PY -m pruninglab sapp-imagenet --scale $SCALE --device $DEVICE --data "$WORK/imagenet" --method sapp --block 16 \
  --sparsity 0.9 --steps "$IMNET_STEPS" --batch-size "$IMNET_BATCH" --workers "$WORKERS" \
  --checkpoint-every 100000 --eval-every 100000 --out "$WORK/run-imagenet" --no-progress
$PY -m pruninglab sapp-criteo --scale $SCALE --device $DEVICE --data "$WORK/criteo/train.txt" --method sapp --block 10 \
  --sparsity 0.9 --steps "$CRITEO_STEPS" --batch-size "$CRITEO_BATCH" --workers "$WORKERS" \
  --val-rows 131072 --eval-batch-size 32768 --checkpoint-every 100000 --out "$WORK/run-criteo" --no-progress

$PY - "$PRUNINGLAB_RESULTS" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
im = json.loads((root / "sapp-imagenet_sapp_b16_s90" / "result.json").read_text())
cr = json.loads((root / "sapp-criteo_sapp_b10_s90" / "result.json").read_text())
print(json.dumps({
    "device": im["provenance"]["device"],
    "imagenet_images_per_s": round(im["metrics"]["train_images_per_s"], 1),
    "imagenet_steps": im["metrics"]["steps"], "imagenet_batch": im["config"]["batch_size"],
    "imagenet_effective_sparsity": round(im["metrics"]["effective_sparsity"], 4),
    "criteo_rows_per_s": round(cr["metrics"]["train_rows_per_s"], 1),
    "criteo_steps": cr["metrics"]["steps"], "criteo_batch": cr["config"]["batch_size"],
    "criteo_first_layer_sparsity": round(cr["metrics"]["layer_sparsity"]["dense.0.weight"], 4),
}))
EOF
