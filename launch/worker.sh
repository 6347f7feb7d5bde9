#!/usr/bin/env bash
# Runs ON a TPU VM worker, not on your machine: tpu_setup.sh, tpu_run.sh, tpu_stop.sh and
# tpu_logs.sh send this file's text over `gcloud ... ssh --command` (env.sh: worker_command), so
# every worker runs the version in your checkout. Usage on a worker:
#   worker.sh setup JAX_VERSION PYTHON_VERSION MOUNT BUCKET   (after ~/dnn_jax.tar.gz is copied)
#   worker.sh unpack | install JAX_VERSION PYTHON_VERSION | mount MOUNT BUCKET   (setup's steps)
#   worker.sh start RUN ARG...   (python -m dnn_jax.main ARG..., detached, log ~/dnn_jax_logs/RUN.log)
#   worker.sh stop RUN [WAIT_S]  (SIGTERM: the library checkpoints and exits)
#   worker.sh logs RUN [FOLLOW] [LINES]
set -euo pipefail

CODE=$HOME/dnn_jax              # the project (a fresh copy of the archive on every setup)
VENV=$HOME/dnn_jax_venv         # Python >= 3.11 with the project and jax[tpu]
LOGS=$HOME/dnn_jax_logs         # RUN.log (stdout and stderr) and RUN.pid of each run
TARBALL=$HOME/dnn_jax.tar.gz
# What holds a TPU (v4/v5p: /dev/accel*, v5e/v6e: /dev/vfio/N) and libtpu's lock: the tests
# point these elsewhere so that they never touch the machine running them.
TPU_DEVICES=${WORKER_TPU_DEVICES:-/dev/accel* /dev/vfio/[0-9]*}
LOCKFILE=${WORKER_LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}
HOST=$(hostname 2>/dev/null || uname -n)

say() { echo "[$HOST] $*"; }
die() { echo "[$HOST] error: $*" >&2; exit 1; }

unpack() {  # Replaces ~/dnn_jax by the archive's files: nothing of an older copy survives.
  local pidfile
  [ -f "$TARBALL" ] || die "no $TARBALL (tpu_setup.sh copies it)"
  for pidfile in "$LOGS"/*.pid; do
    if [ -f "$pidfile" ] && ours "$(cat "$pidfile")"; then
      die "a training runs from $CODE ($pidfile): stop it first (launch/tpu_stop.sh)"
    fi
  done
  rm -rf "$CODE.new"
  mkdir -p "$CODE.new"
  tar -xzf "$TARBALL" -C "$CODE.new"
  rm -rf "$CODE"
  mv "$CODE.new" "$CODE"
  rm -f "$TARBALL"
}

install_env() {  # uv (pip --user), a Python $2 venv, the project and jax[tpu]==$1 in it.
  local jax_version=$1 python_version=$2 uv=$HOME/.local/bin/uv
  if [ ! -x "$uv" ]; then
    python3 -m pip --version >/dev/null 2>&1 ||
      { sudo apt-get update -q && sudo apt-get install -y -q python3-pip; }
    python3 -m pip install -q --user --upgrade uv
  fi
  if ! "$VENV/bin/python" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$python_version'.split('.'))))" 2>/dev/null; then
    rm -rf "$VENV"
    "$uv" venv -q --python "$python_version" "$VENV"  # uv fetches that Python if it is missing.
  fi
  "$uv" pip install -q --python "$VENV/bin/python" -e "${CODE}[gcs]" "jax[tpu]==$jax_version"
  "$VENV/bin/python" -c "import sys, jax; print('[$HOST] python', sys.version.split()[0], 'jax', jax.__version__)"
}

mount_bucket() {  # gcsfuse (apt repository signed by a keyring file) and the bucket at $1.
  local mount=$1 bucket=$2 keyring=/etc/apt/keyrings/gcsfuse.asc
  if ! command -v gcsfuse >/dev/null; then
    sudo install -d -m 0755 /etc/apt/keyrings
    # Google's signing key into a keyring file that only this repository trusts (signed-by);
    # the URL's name is historical: apt-key itself (deprecated) is not used.
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "$keyring" >/dev/null
    echo "deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  sudo mkdir -p "$mount"
  sudo chown "$(id -un)" "$mount"
  mountpoint -q "$mount" || gcsfuse --implicit-dirs "$bucket" "$mount"
}

ours() {  # Whether pid $1 is alive and a dnn_jax.main process.
  alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q dnn_jax.main
}

alive() {  # Whether pid $1 runs, whoever owns it (a zombie, exited but not reaped, does not).
  [ -n "$1" ] && [ -d "/proc/$1" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

tpu_holders() {  # Pids of the processes that have a TPU device open.
  local pattern expr=""
  set -f  # The device patterns are for find's -lname, not for this shell.
  for pattern in $TPU_DEVICES; do  # Unquoted on purpose: the patterns are space-separated.
    expr="$expr${expr:+ -o }-lname $pattern"
  done
  # shellcheck disable=SC2086  # $expr is find's expression, one word per argument.
  sudo find /proc -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/fd/*' \( $expr \) 2>/dev/null |
    cut -d/ -f3 | sort -u || true
}

clear_stale() {  # Stops earlier trainings and anything else on the TPU, removes libtpu's lock.
  local pids="" pid pidfile waited=0
  for pid in $(tpu_holders); do pids="$pids $pid"; done
  for pidfile in "$LOGS"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if ours "$pid"; then pids="$pids $pid"; fi
  done
  if [ -n "$pids" ]; then
    say "stopping stale TPU processes:$pids (SIGTERM, SIGKILL after 60 s)"
    # shellcheck disable=SC2086  # One pid per word.
    sudo kill -TERM $pids 2>/dev/null || true
    for pid in $pids; do
      while alive "$pid" && [ "$waited" -lt 300 ]; do sleep 0.2; waited=$((waited + 1)); done
      if alive "$pid"; then sudo kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  sudo rm -f "$LOCKFILE"
}

start() {  # Starts python -m dnn_jax.main "$@" detached from the ssh session.
  local run=$1 log pidfile waited=0
  shift
  [ -x "$VENV/bin/python" ] || die "no $VENV/bin/python: run launch/tpu_setup.sh first"
  [ -d "$CODE" ] || die "no $CODE: run launch/tpu_setup.sh first"
  mkdir -p "$LOGS"
  log=$LOGS/$run.log pidfile=$LOGS/$run.pid
  clear_stale
  rm -f "$pidfile"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $HOST: start $run" >>"$log"
  cd "$CODE"
  # setsid: a session of its own, so a dropped ssh connection (SIGHUP to the session) does not
  # reach it; nohup as well; stdin, stdout and stderr all off the terminal so ssh can return.
  # The inner shell writes its own pid (the one python gets by exec) whether or not setsid forked.
  # shellcheck disable=SC2016  # $$ and $0 belong to the inner shell.
  setsid nohup bash -c 'echo $$ >"$0" && exec "$@"' "$pidfile" \
    "$VENV/bin/python" -m dnn_jax.main "$@" >>"$log" 2>&1 </dev/null &
  while [ ! -s "$pidfile" ] && [ "$waited" -lt 50 ]; do sleep 0.1; waited=$((waited + 1)); done
  [ -s "$pidfile" ] || die "training did not start; see $log"
  say "training started, pid $(cat "$pidfile"), log $log"
}

stop() {  # SIGTERM to the training of run $1; waits up to $2 s (default 300) for it to exit.
  local run=$1 wait_s=${2:-300} pid waited=0
  pid=$(cat "$LOGS/$run.pid" 2>/dev/null || true)
  if ! ours "$pid"; then
    say "no training of $run is running"
    return 0
  fi
  kill -TERM "$pid"
  say "sent SIGTERM to pid $pid (it saves a checkpoint, then exits)"
  while alive "$pid" && [ "$waited" -lt $((wait_s * 5)) ]; do sleep 0.2; waited=$((waited + 1)); done
  if alive "$pid"; then die "pid $pid still running after ${wait_s} s"; fi
  say "pid $pid exited"
}

logs() {  # The log of run $1: its last $3 lines, followed (tail -F) unless $2 is 0.
  local run=$1 follow=${2:-1} lines=${3:-100} log pid
  log=$LOGS/$run.log
  pid=$(cat "$LOGS/$run.pid" 2>/dev/null || true)
  if ours "$pid"; then say "training of $run running, pid $pid"; else say "training of $run not running"; fi
  if [ "$follow" = 0 ]; then
    [ -f "$log" ] || die "no $log"
    tail -n "$lines" "$log" | sed "s/^/[$HOST] /"
  else
    tail -n "$lines" -F "$log" 2>&1 | sed -u "s/^/[$HOST] /"
  fi
}

[ $# -ge 1 ] || die "usage: worker.sh setup|unpack|install|mount|start|stop|logs ARG..."
command=$1
shift
case $command in
  setup)
    [ $# -eq 4 ] || die "usage: worker.sh setup JAX_VERSION PYTHON_VERSION MOUNT BUCKET"
    unpack
    install_env "$1" "$2"
    mount_bucket "$3" "$4"
    ;;
  unpack) unpack ;;
  install) install_env "$@" ;;
  mount) mount_bucket "$@" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  logs) logs "$@" ;;
  *) die "unknown command $command" ;;
esac
