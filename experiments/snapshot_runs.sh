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

newest_step() {  # workdir -> its newest checkpoint step, or nothing
  [ -d "$1/checkpoints" ] || return 0
  find "$1/checkpoints" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' \
    | sort -n | tail -n 1
}

snapshot_one() {  # src dst
  local src=$1 dst=$2 item latest have
  latest=$(newest_step "$src")
  if [ "$mode" = restore ]; then  # Never replace newer local progress with an older snapshot.
    have=$(newest_step "$dst")
    if [ -n "$have" ] && [ "$have" -ge "${latest:-0}" ]; then
      for item in eval train_summary.json metrics.jsonl; do  # Only what the run lacks.
        if [ -e "$src/$item" ] && [ ! -e "$dst/$item" ]; then cp -r "$src/$item" "$dst/"; fi
      done
      echo "kept: $dst (step $have; snapshot: ${latest:-no checkpoint})"; return 0; fi
  fi
  mkdir -p "$dst"
  for item in eval train_summary.json metrics.jsonl; do
    if [ -e "$src/$item" ]; then rm -rf "${dst:?}/$item"; cp -r "$src/$item" "$dst/"; fi
  done
  [ -z "$results_only" ] && [ -n "$latest" ] || return 0
  # A snapshot keeps only the newest step; a restore adds it next to the older local ones.
  if [ "$mode" != restore ]; then rm -rf "$dst/checkpoints"; fi
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
