#!/usr/bin/env bash
# Sessions end and their untracked files do not carry over, so long runs are carried in git:
#   experiments/snapshot_runs.sh save RUNS DEST [--results-only]   # RUNS/<run> -> DEST/<run>
#   experiments/snapshot_runs.sh restore DEST RUNS                 # DEST/<run> -> RUNS/<run>
#   experiments/snapshot_runs.sh one RUN_DIR DEST_DIR              # one workdir, e.g. the model
# A snapshot keeps each run's results (eval/, train_summary.json, metrics.jsonl) and, unless
# --results-only, its newest checkpoint, from which the same training command resumes.
set -euo pipefail
mode=${1:?usage: $0 save|restore|one FROM TO [--results-only]}
from=${2:?missing FROM}
to=${3:?missing TO}
results_only=${4:-}

snapshot_one() {  # src dst
  local src=$1 dst=$2 item latest
  mkdir -p "$dst"
  for item in eval train_summary.json metrics.jsonl; do
    if [ -e "$src/$item" ]; then rm -rf "${dst:?}/$item"; cp -r "$src/$item" "$dst/"; fi
  done
  [ -z "$results_only" ] && [ -d "$src/checkpoints" ] || return 0
  latest=$(find "$src/checkpoints" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' \
           -printf '%f\n' | sort -n | tail -n 1)
  [ -n "$latest" ] || return 0
  if [ "$mode" = restore ] && [ -d "$dst/checkpoints/$latest" ]; then return 0; fi
  rm -rf "$dst/checkpoints"
  mkdir -p "$dst/checkpoints"
  cp -r "$src/checkpoints/$latest" "$dst/checkpoints/"
}

if [ "$mode" = one ]; then
  snapshot_one "$from" "$to"
else
  for run in "$from"/*/; do
    snapshot_one "${run%/}" "$to/$(basename "$run")"
  done
fi
echo "$mode: $from -> $to"
