#!/usr/bin/env bash
# Follows the training log of $RUN on worker 0 (process 0 writes the metrics), or on the worker
# given (launch/tpu_logs.sh 3), or on all of them (launch/tpu_logs.sh all; lines are prefixed
# with the worker's host name). FOLLOW=0 prints the last LINES (default 100) lines and returns.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu
worker=${1:-0}
case $worker in
  all | [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) ;;
  *) echo "usage: $0 [WORKER|all]" >&2; exit 2 ;;
esac
tpu_ssh "$(worker_command logs "$RUN" "${FOLLOW:-1}" "${LINES:-100}")" "$worker"
