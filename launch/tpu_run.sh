#!/usr/bin/env bash
# Starts $CONFIG on every worker (one JAX process each, joined by jax.distributed), with the
# workdir in the bucket (gs://$BUCKET/$RUN, written natively: Orbax through tensorstore, the
# rest through gcsfs; not through the gcsfuse mount, where Orbax's rename of a finished
# checkpoint is refused or not atomic), detached from this ssh session: it returns once every worker has
# started, and a dropped connection does not stop the training. Each worker logs to
# ~/dnn_jax_logs/$RUN.log (launch/tpu_logs.sh); launch/tpu_stop.sh stops it.
# Extra arguments are passed on: launch/tpu_run.sh --config.train.num_epochs=10
# Before starting, each worker stops earlier trainings and other processes holding the TPU
# (SIGTERM, then SIGKILL after 60 s) and removes /tmp/libtpu_lockfile.
# Rerunning the same command after a preemption resumes from the last checkpoint.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu
require_bucket
# --distributed=auto, not detect: detect looks for TPU_WORKER_HOSTNAMES, which GKE sets but a
# gcloud-created TPU VM does not; jax.distributed.initialize() finds the TPU VM's workers itself.
tpu_ssh "$(worker_command start "$RUN" --config="$CONFIG" --workdir="gs://$BUCKET/$RUN" \
  --config.data.tfds_data_dir="$MOUNT/tensorflow_datasets" --distributed=auto "$@")"
