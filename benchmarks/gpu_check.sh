#!/usr/bin/env bash
# roadmap's CUDA paths in one call, about 8 minutes on one H100/H200 with no internet:
#   bash benchmarks/gpu_check.sh         # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu   # the same stages on the CPU, shrunk: a dry run, so that the script cannot rot
# Stages: a probe of one 512-image ImageNet step (augmentation against step time, host-to-device copies, blocking
# syncs, cuDNN autotuning), smoke trains of both ends (ImageNet layout, bf16, channels-last) eager and compiled,
# a 2-process DDP smoke run (gloo on one GPU, where NCCL refuses two ranks per device), and roadmap.bench for both
# ends of r50. Writes summary.txt (one line per stage, the runs' summaries, a last RESULT line), logs.tgz and
# bench_<device>.* to $OUT. .whl/ (git-ignored) holds wheels of what the GPU machine lacks: hydra-core,
# omegaconf, antlr4-python3-runtime==4.9.3, submitit, hydra-submitit-launcher.
set -u
CPU=0; [ "${1:-}" = "--cpu" ] && CPU=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TORCHINDUCTOR_CACHE_DIR=/tmp/rmind PYTHONPATH=$PWD
OUT=${OUT:-/tmp/rmout}; T=${GPU_CHECK_TMP:-/tmp/rm}; L=$T/logs; rm -rf "$T/runs" "$L"; mkdir -p "$OUT" "$L" "$T/runs"
S=$OUT/summary.txt; FAILED=""
if [ $CPU = 1 ]; then  # CUDA swapped for the CPU; every size shrunk, every limit widened (2 loaded cores)
  PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python; END=${GPU_CHECK_SECONDS:-3000}; SCALE=4; DEV=cpu
  SMALL="train.device=cpu train.threads=2 data.image_size=64 recipe.batch_size=16 recipe.device_batch=8 \
data.train_limit=64 data.test_limit=32 data.workers=2"
  DDP_DEV="train.device=cpu train.threads=1"; BENCH="device=cpu regimes=[micro] reps=1 seconds=0.05"
else
  PY=python3; END=${GPU_CHECK_SECONDS:-560}; SCALE=1; DEV=cuda; SMALL="recipe.batch_size=256 data.workers=6"; DDP_DEV=""
  BENCH="device=cuda regimes=[r50] reps=2 seconds=0.2"
  [ -d .whl ] && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PWD:/tmp/site
fi
{ [ $CPU = 1 ] && echo "CPU dry run (--cpu): CUDA swapped for the CPU, sizes shrunk" || nvidia-smi -L
  $PY -c "import torch,torchvision,hydra;print('torch',torch.__version__,'cuda',torch.version.cuda,'torchvision',\
torchvision.__version__,'hydra',hydra.__version__)"; } >"$S" 2>&1

stage() {  # stage <name> <seconds on a GPU> <command...>: one summary line, its log in logs/
  local n=$1 lim=$(($2 * SCALE)) t=$SECONDS; shift 2
  [ $((END - SECONDS)) -lt $lim ] && lim=$((END - SECONDS))
  if [ $lim -lt 20 ]; then echo "== $n SKIPPED (out of time)" >>"$S"; FAILED="$FAILED $n"; return; fi
  timeout -k 5 $lim "$@" >"$L/$n.log" 2>&1; local rc=$?
  [ $rc = 0 ] || FAILED="$FAILED $n"
  local said; said=$(grep -hE '^\{|completed:|diverged|rror|PASS|MISS|^wrote' "$L/$n.log" | tail -4 | cut -c1-240)
  echo "== $n rc=$rc $((SECONDS - t))s | $(echo "$said" | tr '\n' '|')" >>"$S"
  tar czf "$OUT/logs.tgz" --exclude='*.pt' -C "$T" logs runs 2>/dev/null; }

# Synthetic data: the ImageNet layout (1000 classes, one blocky JPEG per class and split) and Fashion-MNIST's IDX files
$PY - "$T" $CPU <<'EOF' >>"$S" 2>&1
import numpy as np, os, sys; from PIL import Image
r, T, cpu = np.random.default_rng(0), sys.argv[1], sys.argv[2] == "1"
for split, c in ((s, c) for s in ("train", "val") for c in range(1000)):
    os.makedirs(d := f"{T}/folder/{split}/n{c:05d}", exist_ok=True); h, w = r.integers(15, 50, 2); k = 2 if cpu else 8
    Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8).repeat(k, 0).repeat(k, 1)).save(f"{d}/0.jpg")
os.makedirs(f"{T}/fm", exist_ok=True)
for name, dims in (("train-images-idx3-ubyte", (4096, 28, 28)), ("train-labels-idx1-ubyte", (4096,)),
                   ("t10k-images-idx3-ubyte", (1024, 28, 28)), ("t10k-labels-idx1-ubyte", (1024,))):
    head = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    body = r.integers(0, 256 if len(dims) > 1 else 10, dims, dtype=np.uint8).tobytes()
    open(f"{T}/fm/{name}", "wb").write(head + body)
EOF

cat >"$T/ddp1gpu.py" <<'EOF'
# Two ranks on one GPU: NCCL refuses two ranks per device, gloo moves CUDA tensors. The rest is the real roadmap.train.
import torch.distributed as dist, roadmap.machine as m
def setup_distributed(kind):
    dist.is_initialized() or dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), 0
m.setup_distributed = setup_distributed; from roadmap.train import main; main()
EOF

stage probe 100 $PY benchmarks/gpu_probe.py $DEV
F="+experiment=imagenet_r50 data.root=$T/folder recipe.epochs=2 $SMALL"  # GPU: 3 steps x 2 micro-batches of 128
for s in resnet separate_downsampling; do
  stage eager_$s 80 $PY -m roadmap.train +step=$s $F hydra.run.dir=$T/runs/eager_$s; done
D="$T/ddp1gpu.py"  # torchrun's own ranks where each can have a device: the CPU, or two GPUs
{ [ $CPU = 1 ] || [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; } && D="-m roadmap.train"
for c in false true; do stage ddp2_compile_$c 100 $PY -m torch.distributed.run --standalone --nproc_per_node=2 $D \
  +step=separate_downsampling data.root=$T/fm data.download=false budget=paper recipe.epochs=2 recipe.batch_size=256 \
  recipe.device_batch=64 train.compile=$c $DDP_DEV hydra.run.dir=$T/runs/ddp2_$c; done
stage bench 200 $PY -m roadmap.bench $BENCH steps=resnet,separate_downsampling references=false count=false data=false \
  study=false out=$T/bench
cp "$T"/bench/bench_*.* "$OUT/" 2>/dev/null
for s in resnet separate_downsampling; do
  stage compiled_$s 120 $PY -m roadmap.train +step=$s $F train.compile=true hydra.run.dir=$T/runs/compiled_$s; done
$PY - "$T" <<'EOF' >>"$S" 2>&1  # every run's summary, and whether it is what the stage expects
import glob, json, sys
for p in sorted(glob.glob(f"{sys.argv[1]}/runs/*/summary.json")):
    s = json.load(open(p))
    keys = ("status", "epochs_done", "world_size", "ddp_in_sync", "device", "top1", "images_per_s", "data_share",
            "peak_memory_mb", "error")
    print(p.split("/")[-2], {k: s.get(k) for k in keys})
EOF
for r in eager_resnet eager_separate_downsampling ddp2_false ddp2_true compiled_resnet \
         compiled_separate_downsampling; do
  grep -q '"status": "completed"' "$T/runs/$r/summary.json" 2>/dev/null || FAILED="$FAILED $r(not-completed)"; done
tar czf "$OUT/logs.tgz" --exclude='*.pt' -C "$T" logs runs 2>/dev/null
[ -z "$FAILED" ] && echo "RESULT: every stage passed ($((SECONDS))s)" >>"$S" || echo "RESULT: FAILED:$FAILED" >>"$S"
cat "$S"; [ -z "$FAILED" ]
