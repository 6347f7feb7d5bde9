#!/usr/bin/env bash
# Settings shared by the Cloud TPU scripts; override any of them in the environment.
# Sourced, not run: `source launch/env.sh`. Written for bash 3.2 too (macOS): no empty arrays
# under `set -u`, no associative arrays.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export TPU_NAME=${TPU_NAME:-dnn-jax}                        # the TPU VM (node) id
export QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME-qr}     # the queued resource that owns it
export ACCELERATOR=${ACCELERATOR:-v4-8}       # v4-32, v5litepod-16, v5p-8, v6e-8, ...
export BUCKET=${BUCKET:-}                     # gs://BUCKET without the scheme; required
export RUN=${RUN:-dnn_cifar10}                # the run's folder in the bucket
export CONFIG=${CONFIG:-configs/cifar10.py}
export MOUNT=${MOUNT:-/gcs}                   # where every worker mounts the bucket
export SPOT=${SPOT:-0}                        # 1: spot capacity (cheaper, preemptible)
# The JAX release the project is tested with (inside setup.cfg's jax>=0.10); the workers get
# exactly this one as jax[tpu]==$JAX_VERSION (with its matching jaxlib and libtpu).
export JAX_VERSION=${JAX_VERSION:-0.10.2}
# The TPU images ship Python 3.10; the project needs >= 3.11: uv installs this one on the workers.
export PYTHON_VERSION=${PYTHON_VERSION:-3.12}

# The TPU software image (runtime version) and an example zone for each accelerator family.
# The zones are ones Google's "TPU regions and zones" table listed for the family when this was
# written: examples, not guarantees of capacity or quota; set ZONE to the one you have quota in.
tpu_family_defaults() {  # Prints "RUNTIME ZONE" for $1, or nothing for a family it does not know.
  case $1 in
    v4-*) echo "tpu-ubuntu2204-base us-central2-b" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite us-west4-a" ;;
    v5p-*) echo "v2-alpha-tpuv5 us-east5-a" ;;
    v6e-*) echo "v2-alpha-tpuv6e us-east5-b" ;;
  esac
}
_defaults=$(tpu_family_defaults "$ACCELERATOR")
export RUNTIME=${RUNTIME:-${_defaults%% *}}
export ZONE=${ZONE:-${_defaults#* }}
unset _defaults

require_tpu() {  # Exits 2 (one line) unless ZONE, and with `runtime` also RUNTIME, are known.
  local missing=""
  [ -n "$ZONE" ] || missing="ZONE"
  if [ "${1:-}" = runtime ] && [ -z "$RUNTIME" ]; then missing="${missing:+$missing and }RUNTIME"; fi
  if [ -n "$missing" ]; then
    echo "error: unknown ACCELERATOR=$ACCELERATOR (known: v4-*, v5litepod-*/v5e-*, v5p-*," \
      "v6e-*); set $missing explicitly to use it" >&2
    exit 2
  fi
}

require_bucket() {
  if [ -z "$BUCKET" ]; then
    echo "error: set BUCKET to a GCS bucket name (it holds tfds data and the run)" >&2
    exit 2
  fi
}

shell_quote() {  # $1 as one single-quoted word for a POSIX shell (the worker's login shell).
  printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

worker_command() {  # A command line that runs launch/worker.sh with these arguments on a worker.
  local cmd arg
  cmd="bash -c $(shell_quote "$(cat "$LAUNCH_DIR/worker.sh")") worker.sh"
  for arg in "$@"; do cmd="$cmd $(shell_quote "$arg")"; done
  printf '%s\n' "$cmd"
}

tpu_ssh() {  # Runs a command on every worker of the TPU VM (or on worker $2: 0, 1, ...).
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="${2:-all}" --command="$1"
}

label_value() {  # $1 as a GCP label value: lowercase letters, digits, _ and -, at most 63.
  printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9_-' '-' | cut -c1-63
}
