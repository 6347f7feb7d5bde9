#!/usr/bin/env bash
# Creates the Cloud TPU VM (or pod slice) named $TPU_NAME.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
extra=()
[ "$SPOT" = 1 ] && extra+=(--spot)
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${extra[@]}"
