#!/usr/bin/env bash
# Copies the run's results (not its checkpoints) from the bucket to results/$RUN/.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_bucket
dest="$(dirname "$0")/../results/$RUN"
mkdir -p "$dest"
for item in eval train_summary.json metrics.jsonl; do
  gcloud storage cp -r "gs://$BUCKET/$RUN/$item" "$dest/"
done
echo "results in $dest"
