#!/usr/bin/env bash
# The benchmark suite on one GPU, as one short prepared run (a lent machine is billed by the
# second and may lack pip access). Writes JSON + logs under OUT (default benchmarks/results/gpu).
#   benchmarks/gpu.sh [OUT]
# Stages, each under its own time limit so a slow one cannot eat the rest (every JSON is
# rewritten after each section, so a stage cut short keeps what it measured):
#   1. smoke: CPU preset, one section -- fails fast if the environment is broken;
#   2. paper preset, float32, batch 128, every section (per-cell benchmarks on 12 cells);
#   3. paper preset, bfloat16, batch 1024: conv forms, exit overhead, hardware use;
#   4. paper preset, float32, batch 1024: ResNet-32 reference, exit overhead, grid evaluation,
#      hardware use (where the GPU has enough work for the fixed per-op costs to fade).
# These are the commands behind benchmarks/results/gpu_h100/ (each JSON holds its command; the
# runner has changed since: see BENCHMARKS.md).
# If a .whl folder exists (wheels for packages the machine lacks, e.g. ml_collections), it is
# installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null
"$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())' || exit 1
run() {  # limit_seconds log_name args...
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date -u +%T)): $*"
  timeout "$limit" "$py" benchmarks/run.py "$@" --out "$out/$name.json" 2>&1 | tee "$out/$name.log"
}
run "${SMOKE_S:-90}" smoke --quick --sections exit_overhead --repeats 2 --warmup 1 || exit 1
run "${FULL_S:-300}" full_gpu --cells 12 --repeats 10 --warmup 3 --forms masked,blocks:2,blocks:4 \
  --sections conv_forms,exit_overhead,resnet32_reference,hardware,input_pipeline,grid_eval,latency_share
run "${BF16_S:-150}" bf16_b1024_gpu --batch 1024 --dtype bfloat16 --repeats 10 --warmup 3 \
  --forms masked,blocks:2 --sections conv_forms,hardware,exit_overhead
run "${FP32_1024_S:-150}" fp32_b1024_gpu --batch 1024 --repeats 10 --warmup 3 --cells 4 \
  --reference_form masked --sections resnet32_reference,exit_overhead,grid_eval,hardware
echo "=== done ($(date -u +%T))"
