#!/usr/bin/env bash
# The training-recipe study on the shared CIFAR-10 JPEG data (configs/cifar10_cpu.py): every
# recipe and the separately trained widths it is compared with, at one schedule length.
# Usage: experiments/recipe_study.sh RUNS_DIR EPOCHS SEED [NAME ...]
# (resumable: rerun the same command; a finished run is skipped). Table and plot:
#   python experiments/summarize_runs.py RUNS_DIR results/cifar10_cpu/recipe_study_<E>ep
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: $0 RUNS_DIR EPOCHS SEED [NAME ...]}
epochs=${2:?missing EPOCHS}
seed=${3:?missing SEED}
shift 3
dnn=(--config=configs/cifar10_cpu.py)
# Every DNNet recipe below starts from the same baseline (the config's own recipe reset), so a
# change of the config's defaults does not change what a name means.
base=(--config.loss.lambda_scheme=uniform --config.loss.head_gradient=sum
      --config.loss.trunk_gradient=sum --config.loss.distill_weight=0
      --config.loss.distill_teacher=full_exit --config.loss.boosted=False
      --config.loss.adaptive_weight=0 --config.train.optimizer=sgd
      --config.model.exit_head=shared)
declare -A recipes=(
  # The recipe shipped until 2026-12-02 (the anchored weighting with head-gradient means).
  [anchored_headmean]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean"
  # Gradient equilibrium over the trunk too (losses.trunk_gradient_scale).
  [uniform_eq]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean"
  [anchored_eq]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean"
  [sandwich_eq]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=sandwich --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean"
  [sandwich_headmean]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=sandwich --config.loss.head_gradient=mean"
  # US-Nets in-place distillation: every narrower exit learns the widest exit of its depth.
  [uniform_eq_distill]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.loss.distill_weight=1 --config.loss.distill_teacher=widest_at_depth"
  # The same with the teachers (each depth's widest exit) carrying a quarter of each depth.
  [sandwich_eq_distill]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=sandwich --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.loss.distill_weight=1 --config.loss.distill_teacher=widest_at_depth"
  [uniform_eq_boosted]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.loss.boosted=True"
  # Untied heads (model.exit_head=untied): every width its own map of its groups, for the
  # 6.8 points that a refitted head found at width 1 (head_refit.md).
  [anchored_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  [uniform_eq_untied]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # Width-only nesting (lambda on the full-depth exits only): what the exits at shallower depths
  # cost the full-depth slices that the gaps are measured on.
  [width_only_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=full_depth --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # More weight on the full-depth slices, keeping the shallower exits (the width-only
  # diagnostic lifts width 1 by 5-8 points at 5 epochs, but trains no shallower exit).
  [anchored_row_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored_row --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  [row_half_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_half --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # The trunk shaped mostly for the full-depth row (15 epochs of width-only training: gaps
  # 4.5-7.7 at widths 1-4), the shallower exits' heads still learning at full weight.
  [row10_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.1 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  [row25_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.25 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # Between the shipped quarter and row_half: does the grid gain more than the full-depth row loses?
  [row35_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.35 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # Half the loss on the 48 shallower exits (the grid rose from 0.25 to 0.35 on both seeds
  # while the full-depth row held: has the trend levelled off?).
  [row50_eq_untied]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.5 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied"
  # The shipped recipe with adaptive loss balancing on top (weights mixed half and half).
  [row25_eq_untied_adaptive]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.25 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied --config.loss.adaptive_weight=0.5"
  # Adaptive loss balancing (Hu et al.): each exit's weight times a mix of 1 and its inverse
  # running-mean loss.
  [uniform_eq_adaptive]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.loss.adaptive_weight=0.5"
  [anchored_adaptive]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean --config.loss.adaptive_weight=1"
  # Adaptive steps: AdamW (decoupled weight decay 0.05, lr 2e-3).
  [uniform_adamw]="${dnn[*]} ${base[*]} --config.loss.head_gradient=mean --config.train.optimizer=adamw --config.train.learning_rate=0.002 --config.train.weight_decay=0.05"
  [anchored_adamw]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=anchored --config.loss.head_gradient=mean --config.train.optimizer=adamw --config.train.learning_rate=0.002 --config.train.weight_decay=0.05"
  # The shipped recipe with LAMB (Adam steps scaled per layer to the weights' norm), at two
  # learning rates (decoupled weight decay 0.05 as for AdamW).
  [row35_eq_untied_lamb1e2]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.35 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied --config.train.optimizer=lamb --config.train.learning_rate=0.01 --config.train.weight_decay=0.05"
  [row35_eq_untied_lamb3e3]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=row_share --config.loss.shallow_share=0.35 --config.loss.head_gradient=mean --config.loss.trunk_gradient=mean --config.model.exit_head=untied --config.train.optimizer=lamb --config.train.learning_rate=0.003 --config.train.weight_decay=0.05"
  # The DNNet's own architecture trained alone on its full exit: what the causal masks cost
  # (56% of plain_w8's MACs) apart from any recipe; the bound for the full exit of a recipe.
  [causal_w8]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final"
  # The slices' own architectures trained alone (the first K groups of the causal network):
  # a slice's gap to plain_wK splits into what the masks cost (plain_wK - causal_wK) and what
  # the joint training costs (causal_wK - the slice). causal_w1 would be plain_w1 itself.
  [causal_w2]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final --config.model.num_groups=2"
  [causal_w4]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final --config.model.num_groups=4"
  [causal_w6]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final --config.model.num_groups=6"
  # The mask cost against the number of groups at the full width's channels (16/32/64, as
  # plain_w8 and causal_w8): 4 groups of 4/8/16 channels keep 10/16 of the kernel's weights,
  # 2 groups of 8/16/32 keep 3/4 (8 groups: 36/64; plain_w8 is 1 group). Not slices of the
  # 8-group DNNet: read their full exit from eval/grid.json, not with recipe_gaps.py.
  [causal_g4]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final --config.model.num_groups=4 --config.model.channels_per_group=(4,8,16)"
  [causal_g2]="${dnn[*]} ${base[*]} --config.loss.lambda_scheme=final --config.model.num_groups=2 --config.model.channels_per_group=(8,16,32)"
  # Networks trained alone at one width (the gap's other side), same schedule.
  [plain_w1]="--config=configs/baseline.py:cifar10_cpu,plain,1"
  [plain_w2]="--config=configs/baseline.py:cifar10_cpu,plain,2"
  [plain_w4]="--config=configs/baseline.py:cifar10_cpu,plain,4"
  [plain_w6]="--config=configs/baseline.py:cifar10_cpu,plain,6"
  [plain_w8]="--config=configs/baseline.py:cifar10_cpu,plain"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || { echo "names: ${!recipes[*]}"; exit 2; }
for name in "${names[@]}"; do
  [ -n "${recipes[$name]:-}" ] || { echo "unknown recipe: $name" >&2; exit 2; }
  if [ -f "$runs/$name/eval/grid.json" ]; then echo "done: $name"; continue; fi
  echo "=== $name: ${recipes[$name]} ($(date -u +%FT%TZ))"
  # shellcheck disable=SC2086
  python -m dnn_jax.main ${recipes[$name]} --config.train.num_epochs="$epochs" \
      --config.seed="$seed" --workdir="$runs/$name"
done
