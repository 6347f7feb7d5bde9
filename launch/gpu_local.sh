#!/usr/bin/env bash
# One node, every local GPU: data-parallel over all of them in one process.
#   launch/gpu_local.sh configs/cifar10.py /data/runs/dnn_cifar10 /data/tensorflow_datasets [overrides...]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG WORKDIR TFDS_DATA_DIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1 workdir=$2 data=$3
shift 3
cd "$(dirname "$0")/.."
python -m dnn_jax.main --config="$config" --workdir="$workdir" \
  --config.data.tfds_data_dir="$data" "$@"
