#!/usr/bin/env bash
# Deletes the TPU VM (billing stops; the bucket and its checkpoints stay).
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
