"""Runs every bad input and fault of the hardening issues against the CLI and writes the table
of what a user sees: docs/faults.md (and docs/faults.json).

  python experiments/fault_table.py [OUT_PREFIX]      # default docs/faults; about 10 minutes

Each case runs `python -m dnn_jax.main` in a subprocess on the tiny config (or on an image
folder built here), in a scratch folder ($S in the table), after its own set-up (a trained
workdir copied, a file garbled, a disk filled). Recorded: the exit code, how many lines went
to stderr, whether any was a traceback, and the line the user sees (the last stderr line; for
a run that recovers and exits 0, its line about the recovery). The disk-full cases need root
(a small tmpfs); without it they are recorded as skipped.
"""

from __future__ import annotations

import datetime
import errno
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dnn_jax import files  # pylint: disable=wrong-import-position
from tests.helpers import rewrite_with_other_values, truncate_data_files  # pylint: disable=wrong-import-position

TINY = ["--config=configs/tiny.py"]


def _cli(args, cwd=ROOT, stop=None, timeout=600):
  """Runs the CLI; `stop`: (signal, "importing" | "compiling") sent during start-up."""
  cmd = [sys.executable, "-m", "dnn_jax.main", *args]
  if stop is None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       check=False)
    return r.returncode, r.stdout, r.stderr
  proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  sig, when = stop
  if when == "importing":
    time.sleep(0.5)
  else:
    while not proc.stdout.readline().startswith("DNNet: "):
      pass
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _write_folder(root, classes, n=6, size=8, sixteen_bit=False):
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in classes:
    os.makedirs(os.path.join(root, "train", c), exist_ok=True)
    for i in range(n):
      pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, "train", c, f"{i}.png"))
    if sixteen_bit:  # A 16-bit grayscale PNG per class.
      gray = (rng.integers(0, 65535, (size, size))).astype(np.uint16)
      Image.fromarray(gray).save(os.path.join(root, "train", c, "sixteen.png"))


def _folder_args(root):
  return ["--config.data.source=image_folder", f"--config.data.root={root}",
          "--config.data.eval_split=validation", "--config.data.validation_fraction=0.25",
          "--config.train.batch_size=8", "--config.eval.batch_size=8",
          "--config.data.mean=(127.5,127.5,127.5)", "--config.data.std=(100.0,100.0,100.0)"]


class Scratch:
  """The scratch folder: a trained tiny workdir to copy, and small tmpfs disks."""

  def __init__(self, path):
    self.path = path
    self.trained = os.path.join(path, "trained")
    self.mounts = []
    rc, _, err = _cli(TINY + [f"--workdir={self.trained}"])
    if rc:
      raise SystemExit(f"training the tiny workdir failed: {err}")

  def copy(self, name):
    dst = os.path.join(self.path, name)
    shutil.copytree(self.trained, dst)
    shutil.rmtree(os.path.join(dst, "logs"), ignore_errors=True)
    return dst

  def disk(self, name, size):
    """A tmpfs of `size` at $S/name, or None where mounting is not allowed."""
    path = os.path.join(self.path, name)
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, check=False)
    if r.returncode:
      return None
    self.mounts.append(path)
    return path

  def full_disk_with_a_trained_workdir(self, name):
    disk = self.disk(name, "3m")
    if disk is None:
      return None
    shutil.copytree(self.trained, os.path.join(disk, "run"))
    shutil.rmtree(os.path.join(disk, "run", "logs"), ignore_errors=True)
    try:
      with open(os.path.join(disk, "fill"), "wb") as f:
        while True:
          f.write(b"\0" * 65536)
    except OSError as e:
      assert e.errno == errno.ENOSPC, e
    return os.path.join(disk, "run")

  def close(self):
    for path in self.mounts:
      subprocess.run(["umount", path], check=False)


def cases(s: Scratch):
  """(section, case, set-up -> (args, stop) or None to skip)."""
  S = s.path

  def garbled_checkpoint_bytes():
    wd = s.copy("bytes")
    shutil.rmtree(os.path.join(wd, "checkpoints", "20"))
    rewrite_with_other_values(os.path.join(wd, "checkpoints", "15"))
    return TINY + [f"--workdir={wd}", "--config.train.num_steps=25"], None

  def sixteen_bit():
    _write_folder(f"{S}/png16", ["a", "b"], sixteen_bit=True)
    return TINY + _folder_args(f"{S}/png16") + [f"--workdir={S}/png16_run",
                                                "--config.train.num_steps=2"], None

  def other_class_names():
    _write_folder(f"{S}/ab", ["a", "b"])
    _write_folder(f"{S}/cd", ["c", "d"])
    rc, _, err = _cli(TINY + _folder_args(f"{S}/ab") + [f"--workdir={S}/ab_run",
                                                        "--config.train.num_steps=2"])
    assert rc == 0, err
    return TINY + _folder_args(f"{S}/cd") + [f"--workdir={S}/ab_run",
                                             "--config.train.num_steps=4"], None

  def other_image_shape():
    _write_folder(f"{S}/rgb", ["0", "1"])
    wd = s.copy("shape")
    return TINY + _folder_args(f"{S}/rgb") + [f"--workdir={wd}", "--mode=eval"], None

  def second_training():
    wd = f"{S}/busy"
    first = subprocess.Popen([sys.executable, "-m", "dnn_jax.main", *TINY, f"--workdir={wd}",
                              "--config.train.num_steps=2000"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while not first.stdout.readline().startswith("DNNet: "):
      pass
    s.busy = first
    return TINY + [f"--workdir={wd}"], None

  def disk_full_save():
    disk = s.disk("disk_save", "400k")
    return None if disk is None else (TINY + [f"--workdir={disk}/run"], None)

  def disk_full(mode, *extra):
    def setup():
      wd = s.full_disk_with_a_trained_workdir(f"disk_{mode}")
      return None if wd is None else (TINY + [f"--workdir={wd}", f"--mode={mode}", *extra],
                                       None)
    return setup

  def garbled_metadata():
    wd = s.copy("metadata")
    with open(os.path.join(wd, "checkpoints", "20", "config", "metadata"), "w") as f:
      f.write("{x")
    return TINY + [f"--workdir={wd}", "--config.train.num_steps=25"], None

  def none_readable():
    wd = s.copy("unreadable")
    for step in os.listdir(os.path.join(wd, "checkpoints")):
      truncate_data_files(os.path.join(wd, "checkpoints", step))
    return TINY + [f"--workdir={wd}", "--config.train.num_steps=25"], None

  def config_file(name, text):
    def setup():
      path = f"{S}/{name}.py"
      with open(path, "w") as f:
        f.write(text)
      return [f"--config={path}", f"--workdir={S}/never"], None
    return setup

  def plain(*args):
    return lambda: (list(args), None)

  def symlink(kind):
    def setup():
      root = f"{S}/links_{kind}"
      _write_folder(root, ["a", "b"])
      link = os.path.join(root, "train", "a", "link.png")
      os.symlink(link if kind == "loop" else os.path.join(root, "gone.png"), link)
      return TINY + _folder_args(root) + [f"--workdir={root}_run"], None
    return setup

  def truncated_cache():
    _write_folder(f"{S}/cached", ["a", "b"])
    args = TINY + _folder_args(f"{S}/cached") + [f"--workdir={S}/cached_run",
                                                 "--config.train.num_steps=2"]
    rc, _, err = _cli(args)
    assert rc == 0, err
    (cache,) = os.listdir(f"{S}/cached_run/data_cache")
    path = f"{S}/cached_run/data_cache/{cache}"
    with open(path, "r+b") as f:
      f.truncate(100)
    return args[:-1] + ["--config.train.num_steps=4"], None

  def trace(content, is_dir=False):
    def setup():
      path = f"{S}/trace_dir" if is_dir else f"{S}/trace.json"
      if is_dir:
        os.makedirs(path, exist_ok=True)
      else:
        with open(path, "w") as f:
          f.write(content)
      return TINY + [f"--workdir={s.trained}", "--mode=trace",
                     f"--config.budget.trace={path}"], None
    return setup

  def garbled_grid():
    wd = s.copy("grid")
    with open(os.path.join(wd, "eval", "grid.json"), "w") as f:
      f.write('{"accuracy": [[0.5')
    return TINY + [f"--workdir={wd}", "--mode=export", "--config.export.subnet=D1W1"], None

  def export_target_file():
    with open(f"{S}/a_file", "w") as f:
      f.write("x")
    return TINY + [f"--workdir={s.trained}", "--mode=export", "--config.export.subnet=D1W1",
                   f"--config.export.dir={S}/a_file"], None

  def start_up(sig, when):
    return lambda: (TINY + [f"--workdir={S}/signal_{sig.name}"], (sig, when))

  wd = f"--workdir={S}/never"
  return [
      ("Silent wrong results", "bytes changed inside the newest usable checkpoint (resume)",
       garbled_checkpoint_bytes),
      ("Silent wrong results", "16-bit PNGs among the images", sixteen_bit),
      ("Silent wrong results", "resume with other class names of the same count",
       other_class_names),
      ("Silent wrong results", "eval of a 1-channel model on RGB images", other_image_shape),
      ("Silent wrong results", "a second training in a workdir in use", second_training),
      ("Disk and files", "disk full while saving a checkpoint", disk_full_save),
      ("Disk and files", "disk full: --mode=eval", disk_full("eval")),
      ("Disk and files", "disk full: --mode=resources",
       disk_full("resources", "--config.resources.repeats=1")),
      ("Disk and files", "disk full: --mode=select",
       disk_full("select", "--config.budget.macs=1e9")),
      ("Disk and files", "disk full: --mode=export",
       disk_full("export", "--config.export.subnet=D1W1")),
      ("Disk and files", "garbled checkpoint metadata (resume)", garbled_metadata),
      ("Disk and files", "no checkpoint reads", none_readable),
      ("Config and flags", "config file missing", plain(f"--config={S}/missing.py", wd)),
      ("Config and flags", "config file is a directory", plain(f"--config={S}", wd)),
      ("Config and flags", "config file with a syntax error",
       config_file("syntax", "def get_config(:\n")),
      ("Config and flags", "config file without get_config",
       config_file("no_get_config", "X = 1\n")),
      ("Config and flags", "unknown config field",
       plain(*TINY, "--config.model.nonexistent=1", wd)),
      ("Config and flags", "config value of the wrong type",
       plain(*TINY, "--config.train.num_steps=abc", wd)),
      ("Config and flags", "baseline: bad kind",
       plain("--config=configs/baseline.py:tiny,bogus", wd)),
      ("Config and flags", "baseline: bad base",
       plain("--config=configs/baseline.py:nobase,plain", wd)),
      ("Config and flags", "baseline: bad width",
       plain("--config=configs/baseline.py:tiny,plain,x", wd)),
      ("Config and flags", "unknown flag", plain(*TINY, wd, "--nosuchflag")),
      ("Config and flags", "bad --mode", plain(*TINY, wd, "--mode=bogus")),
      ("Config and flags", "no --workdir", plain(*TINY)),
      ("Config and flags", "a stray argument", plain(*TINY, wd, "extra")),
      ("Config and flags", "nan where a number >= 0 belongs",
       plain(*TINY, wd, "--config.train.warmup_epochs=nan")),
      ("Config and flags", "inf where a positive number belongs",
       plain(*TINY, wd, "--config.train.learning_rate=inf")),
      ("Data", "a self-looping symlink among the images", symlink("loop")),
      ("Data", "a dangling symlink among the images", symlink("dangling")),
      ("Data", "a truncated data_cache/*.npz (rerun)", truncated_cache),
      ("Sub-network modes", "a trace value that is a string", trace('[{"macs": "abc"}]')),
      ("Sub-network modes", "a trace path that is a directory", trace("", is_dir=True)),
      ("Sub-network modes", "a garbled eval/grid.json for export", garbled_grid),
      ("Sub-network modes", "an export target that is a file", export_target_file),
      ("Signals", "SIGINT while importing", start_up(signal.SIGINT, "importing")),
      ("Signals", "SIGTERM during the start-up compile", start_up(signal.SIGTERM, "compiling")),
      ("Signals", "SIGINT during the start-up compile", start_up(signal.SIGINT, "compiling")),
  ]


RECOVERY_WORDS = ("unreadable", "converted", "Resumed")


def _seen(rc, out, err):
  lines = err.strip().splitlines()
  if rc == 0:
    said = [l for l in out.splitlines() if any(w in l for w in RECOVERY_WORDS)]
    return " / ".join(said) or (out.strip().splitlines() or [""])[-1]
  return lines[-1] if lines else ""


def main():
  prefix = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "faults")
  t0 = time.time()
  S = tempfile.mkdtemp(prefix="faults-")
  scratch = Scratch(S)
  rows = []
  try:
    for section, case, setup in cases(scratch):
      prepared = setup()
      if prepared is None:
        rows.append({"section": section, "case": case, "skipped": "needs root (tmpfs)"})
        print(f"skipped: {case}", flush=True)
        continue
      args, stop = prepared
      rc, out, err = _cli(args, stop=stop)
      busy = getattr(scratch, "busy", None)
      if busy is not None:
        busy.kill()
        busy.wait()
        scratch.busy = None
      lines = err.strip().splitlines()
      row = {"section": section, "case": case,
             "command": " ".join(["python -m dnn_jax.main", *args]).replace(S, "$S"),
             "exit_code": rc, "stderr_lines": len(lines),
             "traceback": any("Traceback" in l for l in lines),
             "seen": _seen(rc, out, err).replace(S, "$S")}
      rows.append(row)
      print(f"{rc:4d} {len(lines):3d}  {case}: {row['seen'][:120]}", flush=True)
  finally:
    scratch.close()
    shutil.rmtree(S, ignore_errors=True)
  import jax
  import orbax.checkpoint
  record = {"command": "python experiments/fault_table.py", "date": datetime.date.today()
            .isoformat(), "machine": platform.node(), "python": platform.python_version(),
            "jax": jax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
            "wall_seconds": round(time.time() - t0, 1), "cases": rows}
  files.write_json(prefix + ".json", record)
  md = ["# What a user sees on bad input and faults", "",
        f"Measured by `{record['command']}` on {record['date']} ({record['machine']}, Python "
        f"{record['python']}, JAX {record['jax']}, Orbax {record['orbax_checkpoint']}; "
        f"{record['wall_seconds'] / 60:.1f} minutes). `$S` is the scratch folder; the tiny "
        "config stands in for any config. Exit codes: 0 recovered, 1 the run could not go on "
        "(disk full, non-finite loss), 2 bad input, 128 + N stopped by signal N. Library logs "
        "(Orbax, asyncio) go to DIR/logs/<mode>.log, not the terminal.", ""]
  section = None
  for r in rows:
    if r["section"] != section:
      section = r["section"]
      md += [f"## {section}", "", "| case | exit | stderr lines | what the user sees | command |",
             "|---|---|---|---|---|"] if section == rows[0]["section"] else [
                 "", f"## {section}", "", "| case | exit | stderr lines | what the user sees "
                 "| command |", "|---|---|---|---|---|"]
    if "skipped" in r:
      md.append(f"| {r['case']} | skipped | | {r['skipped']} | |")
      continue
    seen = r["seen"].replace("|", "\\|")
    md.append(f"| {r['case']} | {r['exit_code']} | {r['stderr_lines']}"
              f"{' (traceback)' if r['traceback'] else ''} | {seen} | `{r['command']}` |")
  files.write_atomic(prefix + ".md", "\n".join(md) + "\n")
  print(f"wrote {prefix}.md and .json in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  main()
