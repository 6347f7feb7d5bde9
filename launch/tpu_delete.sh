#!/usr/bin/env bash
# Deletes the queued resource $QUEUED_RESOURCE with its node, and the node $TPU_NAME if it is
# still there (one made without a queued resource): chip billing stops; the bucket and its
# checkpoints stay.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu
if gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" --zone="$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" --zone="$ZONE" --force --quiet
fi
if gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
fi
echo "deleted $QUEUED_RESOURCE / $TPU_NAME in $ZONE (if they existed)"
