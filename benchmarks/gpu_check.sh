#!/usr/bin/env bash
# GPU check, about 5-8 minutes on one H100/H200: the CUDA tests, ResNet-50 and Criteo training throughput
# with the data-wait fraction (bf16; eager and torch.compile; Criteo with dense and sparse embedding
# gradients), NCCL DDP with 2 processes when 2 GPUs exist, and (E2E=1) short runs of the real
# sapp-imagenet / sapp-criteo drivers. Everything measured is written under results/gpu/<date>_<host>/
# with provenance (git revision, torch/CUDA versions, GPU, nvidia-smi, command lines).
#
#   bash benchmarks/gpu_check.sh             # needs CUDA
#   bash benchmarks/gpu_check.sh --dry-run   # the same script logic on a CPU with tiny sizes (writes to a
#                                            # scratch folder, not results/); checks every step runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
WORK=${WORK:-$(mktemp -d)}
export PRUNINGLAB_RESULTS="$WORK/results" PRUNINGLAB_RUNS="$WORK/runs" PRUNINGLAB_PROGRESS=0
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; OUT="$WORK/gpu-dry-run"; CLASSES=2; PER_CLASS=8; SIZE=96; CRITEO_ROWS=20000
  IM_BATCH=4; IM_STEPS=2; CR_BATCH=1024; CR_STEPS=3; WARMUP=1; WORKERS=1; COMPILE_FLAG=""
  TEST_CMD=(true)
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available (use --dry-run on a CPU)')"
  DEVICE=cuda; OUT="results/gpu/$(date -u +%Y%m%dT%H%M%SZ)_$(hostname -s)"; CLASSES=100; PER_CLASS=24; SIZE=400
  CRITEO_ROWS=${CRITEO_ROWS:-1000000}; IM_BATCH=256; IM_STEPS=40; CR_BATCH=32768; CR_STEPS=25; WARMUP=8
  WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}; COMPILE_FLAG="--compile"
  TEST_CMD=(timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_bsr.py tests/test_geometry.py
            tests/test_phase.py tests/test_sharpness.py tests/test_runtime.py -k "cuda or gpu or device")
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"; RES="$OUT/results.jsonl"; : > "$RES"
say() { echo "$*" | tee -a "$LOG"; }
t_start=$(date +%s)

# 1. Provenance
$PY - "$OUT/provenance.json" "$DRY" <<'PYEOF'
import json, platform, subprocess, sys, datetime, torch
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:
        return f"unavailable: {e}"
info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": sh("git", "rev-parse", "HEAD"), "git_dirty": bool(sh("git", "status", "--porcelain")),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nvidia_smi": sh("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"),
        "cpu_count": __import__("os").cpu_count(), "dry_run": sys.argv[2] == "1"}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("provenance:", info["gpus"] or "cpu", "| torch", info["torch"], "| rev", info["git_revision"][:10])
PYEOF

# 2. CUDA tests (the tests that skip without CUDA)
say "== CUDA tests"
"${TEST_CMD[@]}" 2>&1 | tail -3 | tee -a "$LOG"

# 3. Data in the real formats: JPEG folder, Criteo TSV prepared once
say "== data (scratch: $WORK)"
$PY -m pruninglab make-imagefolder "$WORK/imagenet" --classes $CLASSES --per-class $PER_CLASS --val-per-class 1 \
  --size $SIZE | tee -a "$LOG"
$PY -m pruninglab make-criteo "$WORK/criteo/train.txt" --rows $CRITEO_ROWS --seed 0 | tee -a "$LOG"
# (the same as `python -m pruninglab prepare-criteo`, callable before the CLI name exists)
$PY -m pruninglab.experiments.prepare_criteo "$WORK/criteo/train.txt" "$WORK/criteo/prepared" --quiet \
  --workers $WORKERS | tee -a "$LOG"

# 4. Throughput with the data-wait fraction
run() {  # run NAME ARGS...: one throughput measurement, its JSON line appended to results.jsonl
  local name=$1; shift
  say "== $name"
  $PY benchmarks/gpu_throughput.py "$@" --device $DEVICE --warmup $WARMUP 2>>"$LOG" | tee -a "$LOG" | tail -1 \
    | $PY -c "import json,sys; d=json.loads(sys.stdin.read()); d['name']='$name'; print(json.dumps(d))" >> "$RES"
}
IM=(imagenet --data "$WORK/imagenet" --batch $IM_BATCH --steps $IM_STEPS --workers $WORKERS)
CR=(criteo --data "$WORK/criteo/prepared" --batch $CR_BATCH --steps $CR_STEPS)
run resnet50_synthetic_eager "${IM[@]}" --synthetic
run resnet50_loader_eager "${IM[@]}"
[ -n "$COMPILE_FLAG" ] && run resnet50_loader_compile "${IM[@]}" --compile
run criteo_dense_eager "${CR[@]}"
run criteo_sparse_eager "${CR[@]}" --sparse
[ -n "$COMPILE_FLAG" ] && run criteo_dense_compile "${CR[@]}" --compile

# 5. NCCL DDP, 2 processes, when 2 GPUs exist
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  for spec in "resnet50_ddp2:${IM[*]}" "criteo_sparse_ddp2:${CR[*]} --sparse"; do
    name=${spec%%:*}; args=${spec#*:}
    say "== $name (torchrun, NCCL)"
    $PY -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/gpu_throughput.py $args \
      --device cuda --warmup $WARMUP 2>>"$LOG" | tee -a "$LOG" | tail -1 \
      | $PY -c "import json,sys; d=json.loads(sys.stdin.read()); d['name']='$name'; print(json.dumps(d))" >> "$RES"
  done
else
  say "== DDP skipped: $NGPU GPU(s)"
fi

# 6. Optional: the real drivers end to end (E2E=1)
if [ "${E2E:-0}" = 1 ]; then
  say "== sapp-imagenet / sapp-criteo drivers"
  $PY -m pruninglab sapp-imagenet --scale full --device $DEVICE --data "$WORK/imagenet" --method sapp --block 16 \
    --sparsity 0.9 --steps 42 --batch-size $IM_BATCH --workers $WORKERS --checkpoint-every 100000 \
    --eval-every 100000 --out "$WORK/run-imagenet" --no-progress 2>&1 | tail -2 | tee -a "$LOG"
  $PY -m pruninglab sapp-criteo --scale full --device $DEVICE --data "$WORK/criteo/train.txt" --method sapp --block 10 \
    --sparsity 0.9 --steps 30 --batch-size $CR_BATCH --workers $WORKERS --val-rows 65536 --eval-batch-size 32768 \
    --checkpoint-every 100000 --out "$WORK/run-criteo" --no-progress 2>&1 | tail -2 | tee -a "$LOG"
fi

say "== done in $(( $(date +%s) - t_start )) s; results in $OUT"
cat "$RES"
