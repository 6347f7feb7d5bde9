#!/usr/bin/env bash
# Reduced-scale reproduction on the shared CIFAR-10 JPEG images (issue: paper experiments).
# Trains every network the figures need, one after another (each resumes from its checkpoints:
# rerun the same command after an interruption), then writes the figures.
#   experiments/cifar10_cpu.sh [RUNS_DIR] [RESULTS_DIR]
# Several instances may run at once (e.g. one per core pair): each run is guarded by a lock
# file, and an instance skips the runs another one holds.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/cifar10_cpu}
out=${2:-results/cifar10_cpu}
train() {  # name, config, extra flags...
  if [ -f "$runs/$1/eval/grid.json" ] && [ -f "$runs/$1/train_summary.json" ]; then
    echo "done: $1"; return; fi
  mkdir -p "$runs"
  exec {lock}>"$runs/$1.lock"
  if ! flock -n "$lock"; then
    echo "skipped: $1 (another instance holds $runs/$1.lock)"; exec {lock}>&-; return; fi
  echo "=== $1: $2 ${*:3} ($(date -u +%FT%TZ))"
  python -m dnn_jax.main --config="$2" --workdir="$runs/$1" "${@:3}"
  exec {lock}>&-
}
# Most informative first (the figures use whatever has finished): the full-width plain network
# (also the brute-force slicing / fine-tuning baseline), the DNNet, the depth-only network, the
# plain network with the DNNet's MACs (6 of 8 groups: 15.1M vs 15.2M), then the other widths
# from narrow (cheap) to wide.
train plain_w8 configs/baseline.py:cifar10_cpu,plain
train dnn configs/cifar10_cpu.py
train depth_only configs/baseline.py:cifar10_cpu,depth_only
for w in 6 1 2 4 3 5 7; do
  train "plain_w$w" "configs/baseline.py:cifar10_cpu,plain,$w"
done
# The recipe at full length (not used by the figures): in-place distillation from the full
# exit, which hurt in the 3-epoch sweep while the teacher was still weak.
train dnn_distill configs/cifar10_cpu.py --config.loss.distill_weight=0.5
# Seed-to-seed spread of the DNNet (init, data order, augmentation; the split is fixed), to
# size the differences above. Runs with the command line's default XLA flags (Eigen
# convolutions), where the runs above had YNNPACK's: part of the spread it measures.
train dnn_seed1 configs/cifar10_cpu.py --config.seed=1
# The trained DNNet ships as a workdir (latest checkpoint + results): see the README.
experiments/snapshot_runs.sh one "$runs/dnn" "$out/model"
python -m dnn_jax.experiments grid --runs="$runs" --out="$out"
python -m dnn_jax.experiments fig5 --runs="$runs" --out="$out"
python -m dnn_jax.experiments fig4 --runs="$runs" --out="$out"
