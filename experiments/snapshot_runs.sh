#!/usr/bin/env bash
# Sessions end and their untracked files do not carry over, so long runs are carried in git:
#   experiments/snapshot_runs.sh save RUNS DEST [--results-only]   # RUNS/<run> -> DEST/<run>
#   experiments/snapshot_runs.sh restore DEST RUNS                 # DEST/<run> -> RUNS/<run>
# A snapshot keeps each run's results (eval/, train_summary.json, metrics.jsonl) and, unless
# --results-only, its newest checkpoint, from which the same training command resumes.
set -euo pipefail
mode=${1:?usage: $0 save|restore FROM TO [--results-only]}
from=${2:?missing FROM}
to=${3:?missing TO}
results_only=${4:-}
for run in "$from"/*/; do
  run=$(basename "$run")
  src="$from/$run" dst="$to/$run"
  [ -d "$src" ] || continue
  mkdir -p "$dst"
  for item in eval train_summary.json metrics.jsonl; do
    if [ -e "$src/$item" ]; then rm -rf "${dst:?}/$item"; cp -r "$src/$item" "$dst/"; fi
  done
  if [ -z "$results_only" ] && [ -d "$src/checkpoints" ]; then
    latest=$(find "$src/checkpoints" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' \
             -printf '%f\n' | sort -n | tail -n 1)
    if [ -n "$latest" ]; then
      if [ "$mode" = restore ] && [ -d "$dst/checkpoints/$latest" ]; then continue; fi
      rm -rf "$dst/checkpoints"
      mkdir -p "$dst/checkpoints"
      cp -r "$src/checkpoints/$latest" "$dst/checkpoints/"
    fi
  fi
done
echo "$mode: $from -> $to"
