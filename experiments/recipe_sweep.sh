#!/usr/bin/env bash
# Short recipe comparison on the shared CIFAR-10 JPEG data (configs/cifar10_cpu.py), to choose
# the joint-loss recipe before the long runs. Each run: same model layout, seed 0, 3 epochs.
# Usage: experiments/recipe_sweep.sh [RUNS_DIR]   (resumable: rerun the same command)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/recipe_sweep}
common=(--config=configs/cifar10_cpu.py --config.train.num_epochs=3 --config.seed=0)
declare -A recipes=(
  [plain_final]="--config.model.causal=False --config.loss.lambda_scheme=final"
  [dnn_uniform]="--config.loss.lambda_scheme=uniform"
  [dnn_linear]="--config.loss.lambda_scheme=linear"
  [dnn_uniform_mean]="--config.loss.lambda_scheme=uniform --config.model.head_reduction=mean"
  [dnn_uniform_distill]="--config.loss.lambda_scheme=uniform --config.loss.distill_weight=0.5"
  [dnn_linear_distill]="--config.loss.lambda_scheme=linear --config.loss.distill_weight=0.5"
)
for name in plain_final dnn_uniform dnn_linear dnn_uniform_distill dnn_uniform_mean dnn_linear_distill; do
  if [ -f "$runs/$name/eval/grid.json" ]; then echo "done: $name"; continue; fi
  echo "=== $name: ${recipes[$name]}"
  # shellcheck disable=SC2086
  python -m dnn_jax.main "${common[@]}" ${recipes[$name]} --workdir="$runs/$name"
done
