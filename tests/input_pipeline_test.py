"""Data sources, deterministic batches, padded evaluation and augmentation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from dnn_jax import evaluate
from dnn_jax import input_pipeline
from dnn_jax import train
from dnn_jax.errors import DataError


def _sharding():
  return NamedSharding(jax.make_mesh((1,), ("data",)), P("data"))


def _split(n, size=4):
  images = np.arange(n * size * size * 3, dtype=np.int64).reshape(n, size, size, 3) % 251
  return input_pipeline.Split(images.astype(np.uint8), np.arange(n, dtype=np.int32) % 10)


def test_digits_splits_are_fixed_and_disjoint(tiny_config):
  ds = input_pipeline.load_dataset(tiny_config.data)
  assert ds.train.images.shape == (1438, 8, 8, 1) and ds.train.images.dtype == np.uint8
  assert len(ds.eval) == 359 and ds.num_classes == 10
  tiny_config.data.eval_split = "validation"
  val = input_pipeline.load_dataset(tiny_config.data)
  assert len(val.train) + len(val.eval) == 1438 and len(val.eval) == 144
  again = input_pipeline.load_dataset(tiny_config.data)
  np.testing.assert_array_equal(val.eval.images, again.eval.images)
  train_rows = {r.tobytes() for r in val.train.images}
  assert not any(r.tobytes() in train_rows for r in ds.eval.images[:50])


def test_train_batches_depend_only_on_seed_and_step():
  split = _split(100)
  a = input_pipeline.TrainBatches(split, 32, seed=7, sharding=_sharding())
  b = input_pipeline.TrainBatches(split, 32, seed=7, sharding=_sharding())
  assert a.steps_per_epoch == 3
  from_iter = {s: np.asarray(lbl) for s, _, lbl in a.iterate(0, 7)}
  for step in (6, 2, 5, 0):  # Any order, fresh object: same batch.
    np.testing.assert_array_equal(np.asarray(b.batch(step)[1]), from_iter[step])
  epoch0 = np.concatenate([a.indices(s) for s in range(3)])
  assert len(set(epoch0)) == 96  # No repeats within an epoch.
  assert not np.array_equal(a.indices(0), a.indices(3))  # Reshuffled each epoch.
  c = input_pipeline.TrainBatches(split, 32, seed=8, sharding=_sharding())
  assert not np.array_equal(a.indices(0), c.indices(0))


def test_eval_batches_pad_and_mask_without_dropping_examples():
  split = _split(23)
  batches = list(input_pipeline.eval_batches(split, 10, _sharding()))
  assert len(batches) == 3
  masks = np.concatenate([np.asarray(m) for _, _, m in batches])
  labels = np.concatenate([np.asarray(l) for _, l, _ in batches])
  assert masks.sum() == 23 and masks[:23].all()
  np.testing.assert_array_equal(labels[:23], split.labels)


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
def test_augment_crops_within_the_padding_and_is_keyed(mode):
  images = jnp.asarray(_split(16, size=8).images)
  out = input_pipeline.augment(images, jax.random.key(0), mode, 2)
  assert out.shape == images.shape and out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, input_pipeline.augment(images, jax.random.key(0), mode, 2))
  assert not np.array_equal(out, input_pipeline.augment(images, jax.random.key(1), mode, 2))
  # The centre 4x4 of an 8x8 image shifted by at most 2 (and maybe flipped) is a crop of it.
  for src, dst in zip(np.asarray(images), np.asarray(out)):
    center = dst[2:6, 2:6]
    found = any(np.array_equal(center, img[i:i + 4, j:j + 4])
                for img in (src, src[:, ::-1]) for i in range(5) for j in range(5))
    assert found
  assert input_pipeline.augment(images, jax.random.key(0), "none", 2) is images


def test_tfds_source_under_mock_data(tiny_config, tmp_path):
  import tensorflow_datasets as tfds
  tiny_config.data.source, tiny_config.data.name = "tfds", "cifar10"
  tiny_config.data.mean, tiny_config.data.std = (125.0, 123.0, 114.0), (63.0, 62.0, 67.0)
  tiny_config.train.num_steps = 3
  with tfds.testing.mock_data(num_examples=70, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = input_pipeline.load_dataset(tiny_config.data)
    assert ds.train.images.shape == (70, 32, 32, 3) and ds.num_classes == 10
    assert len(ds.class_names) == 10 and len(ds.eval) == 70
    summary = train.train_and_evaluate(tiny_config, str(tmp_path))
    record = evaluate.evaluate(tiny_config, str(tmp_path))
  assert summary["final_step"] == 3 and record["num_examples"] == 70


def test_tfds_description_comes_from_the_dataset_info(tiny_config, tmp_path):
  tiny_config.data.source, tiny_config.data.tfds_data_dir = "tfds", str(tmp_path)  # Not built.
  tiny_config.data.name = "cifar10"
  # Unprepared, the builder's code still declares the features (cifar10's class names are
  # read from the data when it is prepared; until then they are the label ids).
  assert input_pipeline.describe(tiny_config.data) == ((32, 32, 3), tuple("0123456789"))
  tiny_config.data.name = "svhn_cropped"
  assert input_pipeline.describe(tiny_config.data) == ((32, 32, 3), tuple("0123456789"))


def test_tfds_missing_data_says_how_to_prepare_it(tiny_config, tmp_path):
  tiny_config.data.source, tiny_config.data.name = "tfds", "svhn_cropped"
  tiny_config.data.tfds_data_dir = str(tmp_path)
  with pytest.raises(DataError, match="tfds build svhn_cropped"):
    input_pipeline.load_dataset(tiny_config.data)


def _write_folder(root, split, classes, n, size=8, fmt="PNG", rng=None):
  rng = rng or np.random.default_rng(0)
  for c in classes:
    os.makedirs(os.path.join(root, split, c), exist_ok=True)
    for i in range(n):
      pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
      pixels[..., classes.index(c) % 3] = 250  # Classes differ in colour.
      Image.fromarray(pixels).save(os.path.join(root, split, c, f"{i}.{fmt.lower()}"), fmt)


def test_image_folder_source_trains_evaluates_and_caches(tiny_config, tmp_path):
  root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  _write_folder(root, "train", ["cat", "dog", "emu"], 12, fmt="PNG")
  _write_folder(root, "test", ["cat", "dog"], 4, fmt="JPEG")  # A subset of the classes.
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.mean, tiny_config.data.std = (127.0,), (70.0,)
  tiny_config.train.num_steps, tiny_config.train.batch_size = 4, 8
  tiny_config.eval.batch_size = 16
  ds = input_pipeline.load_dataset(tiny_config.data, workdir)
  assert ds.class_names == ("cat", "dog", "emu")
  assert ds.train.images.shape == (36, 8, 8, 3) and len(ds.eval) == 8
  np.testing.assert_array_equal(ds.eval.labels, [0] * 4 + [1] * 4)
  cached = os.listdir(os.path.join(workdir, "data_cache"))
  assert len(cached) == 2 and all(f.endswith(".npz") for f in cached)
  again = input_pipeline.load_dataset(tiny_config.data, workdir)  # From the cache.
  np.testing.assert_array_equal(again.train.images, ds.train.images)
  train.train_and_evaluate(tiny_config, workdir)
  assert evaluate.evaluate(tiny_config, workdir)["num_examples"] == 8
  # The trained model on another folder that has only test/ (classes: the model's).
  other = str(tmp_path / "other")
  _write_folder(other, "test", ["emu", "cat"], 3, fmt="PNG")
  tiny_config.data.root = other
  record = evaluate.evaluate(tiny_config, workdir)
  assert record["num_examples"] == 6 and record["split"] == "test"
  _write_folder(other, "test", ["yak"], 1)
  with pytest.raises(DataError, match="classes not in the model's classes: \\['yak'\\]"):
    evaluate.evaluate(tiny_config, workdir)


def test_image_folder_bad_images_are_named(tiny_config, tmp_path):
  root = str(tmp_path)
  _write_folder(root, "train", ["a", "b"], 2)
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.eval_split = "validation"
  Image.new("RGB", (9, 9)).save(os.path.join(root, "train", "b", "big.png"))
  with pytest.raises(DataError, match="big.png is 9x9, expected 8x8"):
    input_pipeline.load_dataset(tiny_config.data)
  os.remove(os.path.join(root, "train", "b", "big.png"))
  with open(os.path.join(root, "train", "a", "broken.jpg"), "wb") as f:
    f.write(b"not an image")
  with pytest.raises(DataError, match="cannot decode image .*broken.jpg"):
    input_pipeline.load_dataset(tiny_config.data)
  os.remove(os.path.join(root, "train", "a", "broken.jpg"))
  tiny_config.data.eval_split = "test"
  with pytest.raises(DataError, match="test.* does not exist"):
    input_pipeline.load_dataset(tiny_config.data)


def test_image_folder_grayscale_is_converted_and_truncated_files_are_named(tiny_config, tmp_path,
                                                                          capsys):
  root = str(tmp_path)
  _write_folder(root, "train", ["a", "b"], 3, fmt="JPEG")
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.eval_split = "validation"
  tiny_config.data.validation_fraction = 0.3
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  Image.fromarray(gray, "L").save(os.path.join(root, "train", "a", "gray.png"))
  ds = input_pipeline.load_dataset(tiny_config.data)
  assert "converted 1 non-RGB" in capsys.readouterr().out
  decoded = np.concatenate([ds.train.images, ds.eval.images])
  assert any(np.array_equal(img, np.repeat(gray[..., None], 3, -1)) for img in decoded)
  jpeg = os.path.join(root, "train", "b", "0.jpeg")
  with open(jpeg, "rb") as f:
    data = f.read()
  with open(jpeg, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(DataError, match="cannot decode image .*0.jpeg"):
    input_pipeline.load_dataset(tiny_config.data)


def _png16(pixels) -> bytes:
  """A 16-bit PNG (grayscale for H x W, RGB for H x W x 3 uint16 pixels), written by hand:
  Pillow writes 16-bit grayscale but not 16-bit RGB."""
  import struct
  import zlib
  h, w = pixels.shape[:2]
  rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", w, h, 16, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped(tiny_config, tmp_path):
  root = str(tmp_path)
  _write_folder(root, "train", ["a", "b"], 3)
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.eval_split = "validation"
  tiny_config.data.validation_fraction = 0.3
  gray = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63,000
  rgb = np.stack([gray, gray // 2, 65535 - gray], -1)
  (tmp_path / "train" / "a" / "gray16.png").write_bytes(_png16(gray))
  (tmp_path / "train" / "b" / "rgb16.png").write_bytes(_png16(rgb))
  ds = input_pipeline.load_dataset(tiny_config.data)
  decoded = np.concatenate([ds.train.images, ds.eval.images]).astype(int)
  for sixteen in (np.repeat(gray[..., None], 3, -1), rgb):
    want = np.round(sixteen / 257.0)
    assert any(np.abs(img - want).max() <= 1 for img in decoded)  # Not all-255.


def test_dangling_and_looping_symlinks_are_named(tiny_config, tmp_path):
  root = str(tmp_path)
  _write_folder(root, "train", ["a", "b"], 3)
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.eval_split = "validation"
  loop = tmp_path / "train" / "a" / "loop.png"
  os.symlink(loop, loop)
  with pytest.raises(DataError, match="cannot read image .*loop.png: Too many levels"):
    input_pipeline.load_dataset(tiny_config.data, str(tmp_path / "run"))
  loop.unlink()
  os.symlink(tmp_path / "gone.png", tmp_path / "train" / "b" / "dangling.png")
  with pytest.raises(DataError, match="cannot read image .*dangling.png: No such file"):
    input_pipeline.load_dataset(tiny_config.data, str(tmp_path / "run"))


def test_a_truncated_data_cache_is_rebuilt(tiny_config, tmp_path, capsys):
  root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  _write_folder(root, "train", ["a", "b"], 3)
  tiny_config.data.source, tiny_config.data.root = "image_folder", root
  tiny_config.data.eval_split = "validation"
  first = input_pipeline.load_dataset(tiny_config.data, workdir)
  (cache,) = (tmp_path / "run" / "data_cache").iterdir()
  cache.write_bytes(cache.read_bytes()[:100])
  again = input_pipeline.load_dataset(tiny_config.data, workdir)
  assert "is unreadable" in capsys.readouterr().out
  np.testing.assert_array_equal(again.train.images, first.train.images)
  again = input_pipeline.load_dataset(tiny_config.data, workdir)  # The rebuilt cache reads.
  assert "is unreadable" not in capsys.readouterr().out


def test_labels_outside_the_classes_are_an_error():
  split = input_pipeline.Split(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 9, 10], np.int32))
  with pytest.raises(DataError, match="example 2 has label 10, outside the 10 classes"):
    input_pipeline.check_labels(split, 10, "tfds train split")
  input_pipeline.check_labels(split, 11, "tfds train split")
