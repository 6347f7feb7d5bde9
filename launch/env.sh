#!/usr/bin/env bash
# Settings shared by the Cloud TPU scripts; override any of them in the environment.
# Sourced, not run: `source launch/env.sh`.
export TPU_NAME=${TPU_NAME:-dnn-jax}
export ZONE=${ZONE:-us-central2-b}
export ACCELERATOR=${ACCELERATOR:-v4-8}          # v4-32 etc. for a multi-host pod slice
export RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
export BUCKET=${BUCKET:-}                         # gs://BUCKET without the scheme; required
export RUN=${RUN:-dnn_cifar10}                    # the run's folder in the bucket
export CONFIG=${CONFIG:-configs/cifar10.py}
export MOUNT=${MOUNT:-/gcs}                       # where every worker mounts the bucket
export SPOT=${SPOT:-0}                            # 1: spot capacity (cheaper, preemptible)

require_bucket() {
  if [ -z "$BUCKET" ]; then
    echo "error: set BUCKET to a GCS bucket name (it holds tfds data and the run)" >&2
    exit 2
  fi
}

tpu_ssh() {  # Runs a command on every worker of the TPU VM.
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
