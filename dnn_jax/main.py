"""Command line: `python -m dnn_jax.main --config=configs/digits.py --workdir=DIR`."""

import datetime
import logging as std_logging
import os
import re
import signal
import socket
import sys
import threading

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dnn_jax import files
from dnn_jax import interrupts
from dnn_jax import xla_flags
from dnn_jax.errors import RunError, TrainingInterrupted, UserError

MODES = ("train", "eval", "resources", "select", "trace", "export", "anytime")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
_MODE = flags.DEFINE_enum(
    "mode", "train", MODES,
    "train: train (resuming from DIR), then evaluate; eval: evaluate the latest checkpoint; "
    "resources: MACs/params/memory/latency of every sub-network; select: best sub-network "
    "under config.budget; trace: choices over a budget time series; export: one sub-network "
    "for deployment (config.export.format); anytime: per-image anytime inference curves.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "detect", ("detect", "off", "auto", "explicit"),
    "Multi-host: auto = jax.distributed.initialize() from the cluster environment (Cloud TPU "
    "VM, SLURM, ...); explicit = from --coordinator_address/--num_processes/--process_id; "
    "detect (default) = auto when the environment describes a multi-process job, else off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def multi_process_environment(env=None) -> bool:
  """Whether the environment describes a job of several processes JAX can join by itself."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return True  # A multi-host Cloud TPU slice.
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if env.get(key, "1").isdigit() and int(env.get(key, "1")) > 1:
      return True
  return False


def initialize_distributed(mode: str) -> None:
  """Joins the multi-host job before JAX touches any device."""
  import jax
  if mode == "detect":
    mode = "auto" if multi_process_environment() else "off"
  if mode == "off":
    return
  if mode == "explicit":
    if not (_COORDINATOR.value and _NUM_PROCESSES.value and _PROCESS_ID.value is not None):
      raise UserError("--distributed=explicit needs --coordinator_address, --num_processes "
                      "and --process_id")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def run(config, workdir: str, mode: str):
  """Runs one --mode; returns its result record (the JSON it writes)."""
  from dnn_jax import config_validation, evaluate, export, resources, select, train
  workdir = files.check_path(workdir, "--workdir")  # gs://BUCKET/PATH works too.
  # Train and eval validate the config themselves (their entry points are called from Python
  # too). The other modes read the model from a checkpoint (resources: from the config when
  # there is none) and need no data set. Either way: before anything is compiled.
  if mode == "train":
    return train.train_and_evaluate(config, workdir)["eval"]
  if mode == "eval":
    return evaluate.evaluate(config, workdir)
  if mode == "anytime":  # Reads the data, like eval.
    from dnn_jax import anytime
    config_validation.validate(config)
    return anytime.run(config, workdir)
  config_validation.validate(config, check_paths=False)
  if mode == "resources":
    return resources.run(config, workdir)
  if mode == "select":
    return select.run(config, workdir)
  if mode == "trace":
    return select.run_trace_mode(config, workdir)
  return export.run(config, workdir)


def _config_spec(argv) -> str:
  """The --config value absl uses (the last one given)."""
  spec = ""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def flag_error_line(e: BaseException, argv) -> str:
  """The one line for an error raised while parsing the flags or loading the config file."""
  spec = _config_spec(argv)
  innermost = e
  while innermost.__cause__ or innermost.__context__:
    innermost = innermost.__cause__ or innermost.__context__
  if isinstance(e, SyntaxError):
    return f"--config={spec}: {e.filename}, line {e.lineno}: {e.msg}"
  if isinstance(e, OSError):  # ml_collections defers a config file's I/O error to here.
    reason = str(e).split("failure to load: ", 1)[-1].strip().splitlines()[-1].strip()
    return f"--config={spec}: cannot load it ({reason})"
  if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    key = str(e.args[0].args[0] if e.args[0].args else e.args[0]).strip("'\"")
    given = [a.split("=", 1)[0] for a in argv
             if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]]
    return f"{given[0] if given else '--config'}: the config has no field {key!r}"
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return f"--config={spec}: {spec.split(':', 1)[0]} defines no get_config()"
  if isinstance(e, flags.Error):
    message = str(e)
    required = re.search(r"Flag (--\w+) must have a value other than None", message)
    if required:
      return f"{required.group(1)} is required"
    if "Error whilst parsing config file" in message:
      return f"--config={spec}: {innermost}"
    return message.splitlines()[0].removeprefix("flag ")
  return f"--config={spec}: {type(innermost).__name__}: {innermost}"


def parse_flags(argv):
  """absl's flag parsing, with every flag and config-file error as one line and exit code 2
  (absl alone exits 1 with a usage hint; ml_collections prints the config's traceback)."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # Raises a config file's deferred I/O error (missing, a folder).
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {flag_error_line(e, argv)}", file=sys.stderr)
    sys.exit(2)
  if len(rest) > 1:
    print(f"error: unexpected arguments {' '.join(rest[1:])} (flags are --name=value)",
          file=sys.stderr)
    sys.exit(2)
  return rest


class _LazyLog:
  """A file stream opened at its first write: a run that logs nothing leaves no file."""

  def __init__(self, path: str):
    self.path, self._file = path, None

  def write(self, text: str) -> None:
    if self._file is None:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._file = open(self.path, "a")  # pylint: disable=consider-using-with
      self._file.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} "
                       f"{socket.gethostname()} pid {os.getpid()}: {' '.join(sys.argv)}\n")
    self._file.write(text)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()


def _log_to_workdir(workdir: str, mode: str) -> None:
  """Library logs (Orbax's warnings and the tracebacks of its background threads, asyncio's
  complaints, Python warnings, gcsfs's notes on gs:// paths) go to DIR/logs/<mode>.log, not
  the terminal: the user sees this program's own lines, and the log keeps the detail. For a
  gs:// DIR the log is a local file (workdir.logs_dir). A log that cannot be written (a full
  disk) is dropped: the run's own error line says what failed."""
  from dnn_jax import workdir as layout
  logging.get_absl_handler().python_handler.stream = _LazyLog(
      os.path.join(layout.logs_dir(workdir), f"{mode}.log"))
  std_logging.raiseExceptions = False  # A failing log write must not print a traceback.

  def log_thread_exception(args):
    logging.error("exception in thread %s", args.thread.name if args.thread else "?",
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

  def log_unraisable(args):
    logging.error("unraisable exception (%s)", args.err_msg or args.object,
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
  threading.excepthook = log_thread_exception
  sys.unraisablehook = log_unraisable
  # Python warnings too (this program prints none of its own): Orbax's abandoned coroutines
  # ("coroutine ... was never awaited") after a failed restore, as their timing makes them.
  std_logging.captureWarnings(True)


def _exit_on_signals() -> None:
  """Until the library is imported and JAX started (_start_up): a signal ends the process with
  one line; nothing has been written yet."""
  def leave(signum, frame):
    del frame
    _exit(f"stopped by {signal.Signals(signum).name} while starting; nothing was written",
          128 + signum)
  for sig in interrupts.SIGNALS:
    signal.signal(sig, leave)


def _start_up() -> None:
  """Imports the library's modules and starts JAX's backends while a signal still ends the
  process at once (_exit_on_signals): an exception raised by a signal handler inside a C
  extension's initialisation (JAX's, Orbax's) aborts the interpreter (exit 134) or is lost."""
  import importlib
  import jax
  for name in ("config_validation", "evaluate", "export", "resources", "select", "train"):
    importlib.import_module(f"dnn_jax.{name}")
  jax.devices()


def _exit(line: str, code: int) -> None:
  """Prints the one line and leaves at once: a failed run's Orbax and asyncio threads would
  otherwise print their tracebacks while Python shuts down (everything the run keeps is
  already on disk: checkpoints are waited for, results written atomically)."""
  print(line, file=sys.stderr)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def main(argv):
  del argv  # parse_flags refused extra arguments.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    workdir = files.check_path(os.path.expanduser(_WORKDIR.value), "--workdir")
    _log_to_workdir(workdir, _MODE.value)
    if _MODE.value in ("train", "eval"):
      xla_flags.apply_defaults()  # Before JAX creates its backends (distributed init does).
    initialize_distributed(_DISTRIBUTED.value)
    _start_up()
    interrupts.install()  # From here a signal raises (and `finally` blocks clean up).
    run(_CONFIG.value, workdir, _MODE.value)
  except UserError as e:
    _exit(f"error: {e}", 2)
  except RunError as e:
    _exit(f"error: {e}", 1)
  except OSError as e:  # A full disk or a read-only folder under a mode's outputs.
    _exit(f"error: {files.describe_os_error(e)}", 1)
  except TrainingInterrupted as e:
    _exit(str(e), 128 + e.signum)


if __name__ == "__main__":
  _exit_on_signals()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
