#!/usr/bin/env bash
# Gets the TPU VM (or pod slice) $TPU_NAME through the queued resource $QUEUED_RESOURCE, waits
# until it is READY and sets it up (tpu_setup.sh; SETUP=0 skips that).
#   - A node that was PREEMPTED (spot), or a request that FAILED or was SUSPENDED, is deleted
#     first and requested anew; a READY node is kept as it is (only set up again).
#   - If anything fails or is interrupted (Ctrl-C) before the node is set up, the queued resource
#     this script requested is deleted with its node, so no chips are left billing
#     (KEEP_ON_FAILURE=1 keeps it, to debug it; then tpu_delete.sh deletes it).
# SPOT=1: spot capacity. WAIT_S (default 6 h): how long the request may wait for capacity;
# POLL_S (default 30): seconds between state checks.
set -euo pipefail
# shellcheck source=launch/env.sh
source "$(dirname "$0")/env.sh"
require_tpu runtime
SETUP=${SETUP:-1}
if [ "$SETUP" = 1 ]; then require_bucket; fi
WAIT_S=${WAIT_S:-21600}
POLL_S=${POLL_S:-30}
KEEP_ON_FAILURE=${KEEP_ON_FAILURE:-0}

qr_gcloud() { gcloud compute tpus queued-resources "$@" --zone="$ZONE"; }
node_gcloud() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }
node_state() { node_gcloud describe "$TPU_NAME" --format='value(state)' 2>/dev/null || true; }
qr_state() { qr_gcloud describe "$QUEUED_RESOURCE" --format='value(state.state)' 2>/dev/null || true; }
delete_qr() { qr_gcloud delete "$QUEUED_RESOURCE" --force --quiet; }  # --force: its node too.

spot=""
ours=0  # 1 once this script owns the request: then a failure deletes it.
finished=0
teardown() {
  local status=$?
  if [ "$ours" = 1 ] && [ "$finished" != 1 ]; then
    if [ "$KEEP_ON_FAILURE" = 1 ]; then
      echo "failed; KEEP_ON_FAILURE=1 keeps $QUEUED_RESOURCE (billed while its node exists):" \
        "launch/tpu_delete.sh deletes it" >&2
    else
      if [ -n "$(qr_state)" ]; then
        echo "failed: deleting queued resource $QUEUED_RESOURCE and its node (no chips left billing)" >&2
        delete_qr || echo "error: could not delete $QUEUED_RESOURCE: run launch/tpu_delete.sh" >&2
      fi
    fi
  fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

node=$(node_state)
qr=$(qr_state)
if [ "$node" = PREEMPTED ]; then
  echo "$TPU_NAME was preempted: deleting it to request it anew"
  if [ -n "$qr" ]; then delete_qr; else node_gcloud delete "$TPU_NAME" --quiet; fi
  node="" qr=""
fi
case $qr in
  FAILED | SUSPENDING | SUSPENDED)
    echo "queued resource $QUEUED_RESOURCE is $qr: deleting it to request it anew"
    delete_qr
    qr=""
    ;;
esac

if [ "$node" = READY ]; then
  echo "$TPU_NAME exists and is READY: keeping it"
else
  if [ -z "$qr" ]; then
    labels="dnn_jax=1,run=$(label_value "$RUN")"
    if [ "$SPOT" = 1 ]; then spot=--spot; fi
    ours=1  # From here a failure or Ctrl-C deletes whatever part of the request exists.
    # $spot unquoted on purpose: empty means no argument (no arrays: bash 3.2 and set -u).
    # shellcheck disable=SC2086
    qr_gcloud create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
      --labels="$labels" --valid-until-duration="${WAIT_S}s" $spot
  else
    echo "queued resource $QUEUED_RESOURCE is $qr: waiting for it"
    ours=1
  fi
  start=$SECONDS
  while :; do
    qr=$(qr_state)
    case $qr in
      FAILED | SUSPENDING | SUSPENDED)
        echo "error: queued resource $QUEUED_RESOURCE is $qr" >&2
        exit 1
        ;;
      ACTIVE)
        node=$(node_state)
        if [ "$node" = READY ]; then break; fi
        ;;
    esac
    if [ $((SECONDS - start)) -ge "$WAIT_S" ]; then
      echo "error: $QUEUED_RESOURCE not ACTIVE with a READY node after ${WAIT_S} s (state ${qr:-unknown})" >&2
      exit 1
    fi
    echo "queued resource ${qr:-(state unknown)}, node ${node:-(none yet)}; checking again in ${POLL_S} s"
    sleep "$POLL_S"
  done
  echo "$TPU_NAME is READY ($ACCELERATOR, $RUNTIME, $ZONE${spot:+, spot}): chips are billed until launch/tpu_delete.sh"
fi

if [ "$SETUP" = 1 ]; then "$(dirname "$0")/tpu_setup.sh"; fi
finished=1
