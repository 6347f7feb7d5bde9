"""Export formats: every file runs in its runtime and matches the DNNet's own logits.

The runtime tests skip where the extra is not installed; `.ci/run` installs them all."""

import json
import os

import jax
import numpy as np
import pytest

from dnn_jax import export
from dnn_jax import models
from dnn_jax import runtimes
from dnn_jax.errors import ConfigError
from dnn_jax.errors import RunError
from dnn_jax.errors import UserError
from tests.helpers import images as _images
from tests.helpers import model_config as _model_config
from tests.helpers import random_variables as _random_variables


needs = lambda runtime: pytest.mark.skipif(
    bool(runtimes.missing(runtime)),
    reason=f"pip install 'dnn_jax[{runtimes.NEEDS[runtime][1]}]'")


def _net(shortcut):
  """A small causal net (5 exits, 3 groups) with non-trivial weights and BN statistics."""
  cfg = _model_config(shortcut=shortcut, head_reduction="mean")
  model = models.create_model(cfg, 5)
  return model, _random_variables(model, (8, 8, 3))


@pytest.fixture(scope="module", params=["projection", "pad"])
def net(request):
  return _net(request.param)


@pytest.fixture(scope="module")
def pad_net():
  """The shortcut with the most ops to translate (strided slices, per-group padding)."""
  return _net("pad")


@pytest.fixture
def no_iree(monkeypatch):
  """Skips the IREE compile of the stablehlo check (slow) where a test is not about it."""
  real = runtimes.importable
  monkeypatch.setattr(runtimes, "importable", lambda m: not m.startswith("iree") and real(m))


def _expected(model, variables, images, depth, width):
  return np.asarray(model.apply(variables, images)[:, depth - 1, width - 1])


@pytest.mark.parametrize("untied", [False, True])
def test_single_width_head_equals_the_cumulative_head(untied):
  feats = jax.random.normal(jax.random.key(0), (4, 2, 2, 12))
  for reduction in ("sum", "mean"):
    head = models.ExitHead(3, 5, reduction, untied=untied)
    hvars = head.init(jax.random.key(1), feats)
    hvars = jax.tree_util.tree_map(lambda p: p + 0.3, hvars)  # a non-zero bias
    np.testing.assert_allclose(head.clone(widest_only=True).apply(hvars, feats),
                               head.apply(hvars, feats)[:, -1], atol=1e-5)


@pytest.mark.core
def test_stablehlo_export_is_batch_polymorphic_and_checked(net, tmp_path, no_iree):
  model, variables = net
  out = str(tmp_path / "D4W2")
  manifest = export.export_subnetwork(model, variables, 4, 2, (8, 8, 3), out)
  assert sorted(os.listdir(out)) == ["manifest.json", "model.mlir", "model.stablehlo",
                                     "weights.npz"]
  assert manifest["formats"]["stablehlo"]["checks"]["jax"]["max_abs_diff"] < 1e-4
  for batch in (1, 7):
    x = np.asarray(_images((batch, 8, 8, 3)))
    np.testing.assert_allclose(export.load_and_run(out, x),
                               _expected(model, variables, x, 4, 2), atol=1e-4)
  mlir = open(os.path.join(out, "model.mlir")).read()
  assert "tensor<?x8x8x3xf32>" in mlir and "gather" not in mlir  # IREE compiles neither
  assert "dynamic_reshape" not in mlir                           # gathers nor dynamic reshapes


@needs("iree")
def test_mlir_compiles_and_runs_in_iree(pad_net, tmp_path):
  model, variables = pad_net
  out = str(tmp_path / "D5W3")
  manifest = export.export_subnetwork(model, variables, 5, 3, (8, 8, 3), out)
  assert manifest["formats"]["stablehlo"]["checks"]["iree"]["max_abs_diff"] < 1e-4
  x = np.asarray(_images((3, 8, 8, 3)))  # another batch size than the check's
  np.testing.assert_allclose(export.run_iree(os.path.join(out, "model.mlir"), x),
                             _expected(model, variables, x, 5, 3), atol=1e-4)


@needs("onnxruntime")
def test_onnx_runs_in_onnxruntime_with_any_batch(net, tmp_path):
  model, variables = net
  for depth, width in [(1, 1), (3, 2), (5, 3)]:
    _check_onnx(model, variables, depth, width, tmp_path)


@needs("onnxruntime")
def test_an_untied_head_exports_its_widths_own_map(tmp_path):
  model = models.create_model(_model_config(exit_head="untied"), 5)
  variables = _random_variables(model, (8, 8, 3))
  for depth, width in [(2, 1), (5, 2)]:
    _check_onnx(model, variables, depth, width, tmp_path)


def _check_onnx(model, variables, depth, width, tmp_path):
  out = str(tmp_path / f"D{depth}W{width}")
  manifest = export.export_subnetwork(model, variables, depth, width, (8, 8, 3), out,
                                      formats=("onnx",))
  assert manifest["formats"]["onnx"]["checks"]["onnxruntime"]["max_abs_diff"] < 1e-4
  for batch in (1, 6):
    x = np.asarray(_images((batch, 8, 8, 3)))
    np.testing.assert_allclose(export.run_onnx(os.path.join(out, "model.onnx"), x),
                               _expected(model, variables, x, depth, width), atol=1e-4)


@needs("litert")
def test_tflite_one_static_batch_file_per_size(pad_net, tmp_path):
  model, variables = pad_net
  out = str(tmp_path / "D5W2")
  manifest = export.export_subnetwork(model, variables, 5, 2, (8, 8, 3), out,
                                      formats=("tflite",), tflite_batch_sizes=(1, 4))
  assert manifest["formats"]["tflite"]["files"] == ["model_b1.tflite", "model_b4.tflite"]
  assert manifest["formats"]["tflite"]["checks"]["litert"]["max_abs_diff"] < 1e-4
  x = np.asarray(_images((4, 8, 8, 3)))
  np.testing.assert_allclose(export.run_tflite(os.path.join(out, "model_b4.tflite"), x),
                             _expected(model, variables, x, 5, 2), atol=1e-4)


def test_a_failed_check_writes_nothing_and_keeps_the_old_export(pad_net, tmp_path, monkeypatch,
                                                                 no_iree):
  model, variables = pad_net
  out = str(tmp_path / "D2W2")
  export.export_subnetwork(model, variables, 2, 2, (8, 8, 3), out)
  before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
  monkeypatch.setattr(export, "_diff", lambda a, b: 1.0)
  with pytest.raises(RunError, match="differ from the DNNet's by 1.00e"):
    export.export_subnetwork(model, variables, 2, 2, (8, 8, 3), out)
  assert {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)} == before
  assert sorted(os.listdir(tmp_path)) == ["D2W2"]  # no temporary directory left


def test_format_fields_are_validated():
  from dnn_jax import config_base, config_validation
  config = config_base.base_config()
  config.export.format = "stablehlo,coreml"
  with pytest.raises(ConfigError, match="config.export.format: unknown format 'coreml'"):
    config_validation.validate(config)
  config.export.format = "onnx"
  config.export.tflite_batch_sizes = "1,x"
  with pytest.raises(ConfigError, match="config.export.tflite_batch_sizes: '1,x'"):
    config_validation.validate(config)
  assert export.parse_formats(" onnx, stablehlo,onnx") == ("onnx", "stablehlo")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from configs import tiny
  from dnn_jax import train
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = tiny.get_config()
  config.train.num_steps = 10
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_export_mode_refuses_a_missing_runtime_other_models_and_files(trained, tmp_path,
                                                                      monkeypatch, no_iree):
  from dnn_jax import main
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.export.subnet = "D2W1"
  real = runtimes.importable
  monkeypatch.setattr(runtimes, "importable", lambda m: m != "onnxruntime" and real(m))
  config.export.format = "stablehlo,onnx"
  with pytest.raises(UserError, match=r"needs onnxruntime: pip install 'dnn_jax\[onnx\]'"):
    main.run(config, workdir, "export")
  assert not os.path.exists(os.path.join(workdir, "export"))
  monkeypatch.setattr(runtimes, "importable", real)

  config.export.format = "stablehlo"
  main.run(config, workdir, "export")
  out = os.path.join(workdir, "export", "D2W1")
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["checkpoint_step"] == 10 and manifest["formats"]["stablehlo"]["usage"]
  main.run(config, workdir, "export")  # The same model again: replaced.

  other = dict(manifest, weights_sha256="0" * 64)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "manifest.json").write_text(json.dumps(other))
  config.export.dir = str(tmp_path / "other")
  with pytest.raises(UserError, match="holds the export of another model"):
    main.run(config, workdir, "export")
  assert json.loads((tmp_path / "other" / "manifest.json").read_text()) == other
  (tmp_path / "afile").write_text("x")
  config.export.dir = str(tmp_path / "afile")
  with pytest.raises(UserError, match="exists and is not a directory"):
    main.run(config, workdir, "export")


def test_every_installed_runtime_computes_the_sub_network(pad_net):
  model, variables = pad_net
  from dnn_jax import subnetwork
  sub, sub_vars = subnetwork.extract(model, variables, 4, 2)
  x = np.asarray(_images((2, 8, 8, 3)))
  for runtime in runtimes.available():
    fn = runtimes.compile_subnetwork(runtime, sub, sub_vars, (8, 8, 3), 2)
    np.testing.assert_allclose(fn(x), _expected(model, variables, x, 4, 2), atol=1e-4,
                               err_msg=runtime)


@needs("onnxruntime")
def test_latency_grid_in_another_runtime(pad_net):
  from dnn_jax import resources
  model, variables = pad_net
  grid = resources.measured_grid(model, variables, (8, 8, 3), batch_size=3, warmup=1,
                                 repeats=2, runtime="onnxruntime")
  for key in ("latency_ms_batch1", "latency_ms_batch"):
    assert grid[key].shape == (5, 3) and (grid[key] > 0).all()


def test_resources_mode_names_the_extra_a_runtime_needs(monkeypatch):
  from configs import tiny
  from dnn_jax import resources
  monkeypatch.setattr(runtimes, "importable", lambda m: not m.startswith("iree"))
  config = tiny.get_config()
  config.resources.runtime = "iree"
  with pytest.raises(UserError, match=r"resources.runtime=iree needs iree.compiler, "
                                      r"iree.runtime: pip install 'dnn_jax\[iree\]'"):
    resources.compute(config, "/nonexistent-workdir")
