#!/usr/bin/env bash
# One node, every local GPU: data-parallel over all of them in one process.
#   launch/gpu_local.sh configs/cifar10.py /data/runs/dnn_cifar10 /data/tensorflow_datasets [overrides...]
# Relative paths are taken from the directory you run it in (a config not found there is looked
# up in the repository, so configs/cifar10.py works from anywhere). It passes --distributed=off:
# one process sees every local GPU, and inside a SLURM allocation of several tasks `detect`
# would wait for peer processes that never start (a later --distributed=... overrides it).
# PYTHON (default: python on PATH) is the interpreter with the project and jax[cuda12].
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG WORKDIR TFDS_DATA_DIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)

absolute() {  # $1 from the current directory, unless it is absolute already.
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

config=$1  # FILE or FILE:ARGS (ml_collections config_flags); only FILE is a path.
config_file=${config%%:*} config_args=""
case $config in *:*) config_args=":${config#*:}" ;; esac
if [ ! -e "$config_file" ] && [ -e "$root/$config_file" ]; then
  config_file=$root/$config_file
fi
config=$(absolute "$config_file")$config_args
workdir=$(absolute "$2")
data=$(absolute "$3")
shift 3
cd "$root"  # So that `configs` is importable, as in `python -m dnn_jax.main` from the root.
"${PYTHON:-python}" -m dnn_jax.main --config="$config" --workdir="$workdir" \
  --config.data.tfds_data_dir="$data" --distributed=off "$@"
