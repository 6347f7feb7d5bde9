#!/usr/bin/env bash
# Runs $CONFIG on every worker (one JAX process each, joined by jax.distributed), with the
# workdir in the bucket. Extra arguments are passed on: launch/tpu_run.sh --config.train.num_epochs=10
# Rerunning the same command after a preemption resumes from the last checkpoint.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_bucket
args=""  # printf with no arguments would still print '' (an empty positional argument)
[ $# -eq 0 ] || args=$(printf ' %q' "$@")
tpu_ssh ". ~/venv/bin/activate && cd ~/dnn_jax && python -m dnn_jax.main --config=$CONFIG \
  --workdir=$MOUNT/$RUN --config.data.tfds_data_dir=$MOUNT/tensorflow_datasets \
  --distributed=auto$args"
