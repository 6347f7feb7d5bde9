#!/usr/bin/env bash
# Short recipe comparison on the shared CIFAR-10 JPEG data (configs/cifar10_cpu.py), to choose
# the joint-loss recipe before the long runs. Each run: same model layout, seed 0, 3 epochs.
# Usage: experiments/recipe_sweep.sh [RUNS_DIR [NAME ...]]   (resumable: rerun the same command)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/recipe_sweep}
shift || true
common=(--config=configs/cifar10_cpu.py --config.train.num_epochs=3 --config.seed=0
        --config.loss.head_gradient=sum --config.loss.distill_weight=0
        --config.loss.lambda_scheme=uniform --config.model.head_reduction=sum)
declare -A recipes=(
  [plain_final]="--config.model.causal=False --config.loss.lambda_scheme=final"
  [dnn_uniform]=""
  [dnn_final]="--config.loss.lambda_scheme=final"
  [dnn_linear]="--config.loss.lambda_scheme=linear"
  [dnn_uniform_mean]="--config.model.head_reduction=mean"
  [dnn_uniform_distill]="--config.loss.distill_weight=0.5"
  [dnn_linear_distill]="--config.loss.lambda_scheme=linear --config.loss.distill_weight=0.5"
  [dnn_uniform_headmean]="--config.loss.head_gradient=mean"
  [dnn_linear_headmean]="--config.loss.lambda_scheme=linear --config.loss.head_gradient=mean"
  [dnn_anchored_headmean]="--config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean"
  [dnn_anchored_headmean_distill]="--config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean --config.loss.distill_weight=0.5"
  [dnn_linear_headmean_distill]="--config.loss.lambda_scheme=linear --config.loss.head_gradient=mean --config.loss.distill_weight=0.5"
  [dnn_uniform_headmean_distill]="--config.loss.head_gradient=mean --config.loss.distill_weight=0.5"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(plain_final dnn_final dnn_uniform dnn_linear dnn_uniform_headmean
                                 dnn_linear_headmean dnn_uniform_headmean_distill
                                 dnn_linear_headmean_distill dnn_anchored_headmean
                                 dnn_anchored_headmean_distill
                                 dnn_uniform_distill dnn_uniform_mean dnn_linear_distill)
for name in "${names[@]}"; do
  if [ -f "$runs/$name/eval/grid.json" ]; then echo "done: $name"; continue; fi
  echo "=== $name: ${recipes[$name]} ($(date -u +%FT%TZ))"
  # shellcheck disable=SC2086
  python -m dnn_jax.main "${common[@]}" ${recipes[$name]} --workdir="$runs/$name"
done
