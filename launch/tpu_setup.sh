#!/usr/bin/env bash
# Copies the committed HEAD of this checkout (git archive, without results/) to every worker,
# where it replaces the previous copy whole (no file deleted since survives), creates a Python
# $PYTHON_VERSION environment with uv (the TPU images ship 3.10; the project needs >= 3.11),
# installs the project (with its `gcs` extra, for the gs:// workdir) and jax[tpu]==$JAX_VERSION
# into it, and mounts the bucket at $MOUNT (gcsfuse) for the tfds data, which is only read.
# The steps on a worker are launch/worker.sh's `setup`.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu
require_bucket
cd "$LAUNCH_DIR/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive --format=tar.gz -o "$tmp/dnn_jax.tar.gz" HEAD -- . ':(exclude)results'
gcloud compute tpus tpu-vm scp "$tmp/dnn_jax.tar.gz" "$TPU_NAME":~/dnn_jax.tar.gz \
  --zone="$ZONE" --worker=all
tpu_ssh "$(worker_command setup "$JAX_VERSION" "$PYTHON_VERSION" "$MOUNT" "$BUCKET")"
