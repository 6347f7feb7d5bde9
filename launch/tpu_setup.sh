#!/usr/bin/env bash
# Copies this checkout to every worker, installs it with JAX for TPU, and mounts the bucket
# at $MOUNT (gcsfuse) so that every worker sees the same workdir (Orbax writes collectively).
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_bucket
cd "$(dirname "$0")/.."
tarball=$(mktemp -d)/dnn_jax.tar.gz
git archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":~/dnn_jax.tar.gz --zone="$ZONE" --worker=all
tpu_ssh "set -e
  mkdir -p ~/dnn_jax && tar -xzf ~/dnn_jax.tar.gz -C ~/dnn_jax
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -U pip && pip install -q -e ~/dnn_jax 'jax[tpu]'
  if ! command -v gcsfuse >/dev/null; then
    export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
    echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
    curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
  mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT"
