#!/usr/bin/env bash
# Sends SIGTERM to the training of $RUN on every worker: the library saves a checkpoint and
# exits (rerun launch/tpu_run.sh to resume). Waits up to STOP_WAIT_S (default 300) seconds
# for every worker's process to exit. The node keeps billing until launch/tpu_delete.sh.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu
tpu_ssh "$(worker_command stop "$RUN" "${STOP_WAIT_S:-300}")"
