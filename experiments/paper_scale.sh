#!/usr/bin/env bash
# Paper-scale Fig. 4 / Fig. 5 on an accelerator (GPU/TPU), CIFAR-10 or SVHN from prepared tfds
# data. Same steps as experiments/cifar10_cpu.sh: every network the figures need, each resumable,
# then the figures.
#   TFDS_DIR=/data/tensorflow_datasets experiments/paper_scale.sh [BASE] [RUNS_DIR] [RESULTS_DIR]
# BASE: cifar10 (default) or svhn. WIDTHS: the widths (of 22 groups) trained from scratch for
# "full training" (default 2 4 6 8 11 14 18; 22 is the plain network every run also needs).
# Cost: each run is one 180-epoch (CIFAR-10) or 40-epoch (SVHN) ResNet-32-sized training; on
# one H100 a DNNet train step (batch 128, fp32) took 7.7 ms, a ResNet-32 step 6.8 ms
# (BENCHMARKS.md): about 9 minutes of steps per CIFAR-10 run.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-cifar10}
runs=${2:-runs/$base}
out=${3:-results/$base}
: "${TFDS_DIR:?set TFDS_DIR to the prepared tfds data dir}"
widths=${WIDTHS:-2 4 6 8 11 14 18}
train() {  # name, config
  if [ -f "$runs/$1/eval/grid.json" ] && [ -f "$runs/$1/train_summary.json" ]; then
    echo "done: $1"; return; fi
  echo "=== $1: $2 ($(date -u +%FT%TZ))"
  python -m dnn_jax.main --config="$2" --workdir="$runs/$1" \
    --config.data.tfds_data_dir="$TFDS_DIR"
}
train dnn "configs/$base.py"
train plain_w22 "configs/baseline.py:$base,plain"
train depth_only "configs/baseline.py:$base,depth_only"
for w in $widths; do
  train "plain_w$w" "configs/baseline.py:$base,plain,$w"
done
python -m dnn_jax.experiments grid --runs="$runs" --out="$out"
python -m dnn_jax.experiments fig5 --runs="$runs" --out="$out" --budget_macs=24e6
python -m dnn_jax.experiments fig4 --runs="$runs" --out="$out"
