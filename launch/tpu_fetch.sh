#!/usr/bin/env bash
# Copies the run's results (not its checkpoints) from the bucket to results/$RUN/ (or $DEST): every item
# that exists, whether or not the others do (a run in progress has no train_summary.json yet).
# Exits 1, naming them, if any item could not be copied.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_bucket
dest=${DEST:-$LAUNCH_DIR/../results/$RUN}
mkdir -p "$dest"
missing=""
for item in eval tensorboard train_summary.json metrics.jsonl; do
  if ! gcloud storage cp -r "gs://$BUCKET/$RUN/$item" "$dest/"; then
    missing="$missing $item"
  fi
done
echo "results in $dest"
if [ -n "$missing" ]; then
  echo "error: not copied (missing or failed):$missing" >&2
  exit 1
fi
