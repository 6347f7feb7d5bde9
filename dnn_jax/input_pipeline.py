"""Whole splits as in-memory uint8 arrays; batch order and augmentation are functions of (seed, step)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dnn_jax import files as files_lib
from dnn_jax.errors import DataError

SPLIT_SEED = 0  # Carved splits do not move with config.seed: every run sees the same ones.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8, N x H x W x C
  labels: np.ndarray  # int32, N

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  eval: Split
  eval_split: str  # test | validation
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def carve(split: Split, fraction: float) -> tuple[Split, Split]:
  """Splits off `fraction` of the examples with a fixed seed: (rest, held_out)."""
  n_out = int(round(len(split) * fraction))
  if not 0 < n_out < len(split):
    raise DataError(f"config.data.validation_fraction={fraction} leaves an empty split "
                    f"of {len(split)} examples")
  perm = np.random.default_rng(SPLIT_SEED).permutation(len(split))
  keep, out = np.sort(perm[n_out:]), np.sort(perm[:n_out])
  return (Split(split.images[keep], split.labels[keep]),
          Split(split.images[out], split.labels[out]))


def load_dataset(data_config, workdir: str | None = None, *,
                 eval_only_classes: tuple[str, ...] | None = None) -> Dataset:
  """Loads the train split and the split selected by `data_config.eval_split`.

  `eval_only_classes` (evaluating a trained model on an image folder's test/ split): the
  classes come from the model, and train/ is neither needed nor decoded.
  """
  if (eval_only_classes and data_config.source == "image_folder"
      and data_config.eval_split == "test"):
    test = _load_image_folder_test(data_config, workdir, list(eval_only_classes))
    empty = Split(test.images[:0], test.labels[:0])
    return Dataset(empty, test, "test", tuple(eval_only_classes))
  loaders = {"digits": _load_digits, "tfds": _load_tfds, "image_folder": _load_image_folder}
  train, test, class_names = loaders[data_config.source](data_config, workdir,
                                                         data_config.eval_split == "test")
  check_labels(train, len(class_names), f"{data_config.source} train split")
  if test is not None:
    check_labels(test, len(class_names), f"{data_config.source} test split")
  if data_config.eval_split == "validation":
    train, held_out = carve(train, data_config.validation_fraction)
  else:
    held_out = test
  return Dataset(train, held_out, data_config.eval_split, tuple(class_names))


def check_labels(split: Split, num_classes: int, where: str) -> None:
  """Every label must name a class: a clear error instead of a silent wrong one-hot."""
  bad = np.flatnonzero((split.labels < 0) | (split.labels >= num_classes))
  if bad.size:
    raise DataError(f"{where}: example {bad[0]} has label {split.labels[bad[0]]}, outside the "
                    f"{num_classes} classes ({bad.size} such examples)")


def static_image_shape(data_config) -> tuple[int, int, int] | None:
  """The image shape a data config fixes without reading any file (None: it must be read)."""
  if data_config.source == "digits":
    return (8, 8, 1)
  if data_config.source == "tfds":
    return None  # In the dataset's info: describe().
  return (data_config.image_size, data_config.image_size, 3) if data_config.image_size else None


def describe(data_config) -> tuple[tuple[int, int, int], tuple[str, ...]]:
  """(image shape, class names) of a source without loading its images."""
  if data_config.source == "digits":
    return static_image_shape(data_config), tuple(str(i) for i in range(10))
  if data_config.source == "tfds":
    # The builder's info: the prepared data set's (class names included), else the features
    # its code declares.
    import tensorflow_datasets as tfds
    features = tfds.builder(data_config.name, data_dir=data_config.tfds_data_dir or None
                            ).info.features
    return tuple(features["image"].shape), tuple(features["label"].names)
  train_dir = os.path.join(os.path.expanduser(data_config.root), "train")
  if not os.path.isdir(train_dir):  # The classes are those of train/ (test/ may hold fewer).
    raise DataError(f"config.data.root: {data_config.root!r} has no train/ folder to read the "
                    "classes and image size from")
  classes, files = _folder_files(train_dir)
  shape = static_image_shape(data_config)
  if shape is None:
    from PIL import Image
    with Image.open(os.path.join(train_dir, files[0][0])) as im:
      shape = (im.size[1], im.size[1], 3)
  return shape, tuple(classes)


def _load_digits(data_config, workdir, need_test):
  del data_config, workdir, need_test
  from sklearn import datasets  # scikit-learn ships these 1,797 8x8 digits: no download.
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  full = Split(images, digits.target.astype(np.int32))
  # The digits have no official test split: a fixed 20% serves as one.
  train, test = carve(full, 0.2)
  return train, test, [str(i) for i in range(10)]


def _load_tfds(data_config, workdir, need_test):
  del workdir
  import tensorflow_datasets as tfds  # Reading prepared data needs no TensorFlow.
  data_dir = data_config.tfds_data_dir or None

  def read(split_name):
    try:
      source = tfds.data_source(data_config.name, split=split_name, data_dir=data_dir)
    except Exception as e:  # tfds raises a variety of errors for a missing dataset.
      where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise DataError(
          f"config.data.name={data_config.name!r}: no prepared tfds data in {where} "
          f"({type(e).__name__}). Prepare it once on a machine with TensorFlow and internet: "
          f"`tfds build {data_config.name} --data_dir={where} --file_format=array_record`, "
          f"then set config.data.tfds_data_dir") from e
    n = len(source)
    first = source[0]
    images = np.empty((n,) + first["image"].shape, np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
      ex = source[i]
      images[i], labels[i] = ex["image"], ex["label"]
    names = source.dataset_info.features["label"].names
    return Split(images, labels), names

  train, names = read("train")
  test = read("test")[0] if need_test else None
  return train, test, names


def _folder_files(split_dir: str) -> tuple[list[str], list[tuple[str, int]]]:
  classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise DataError(f"config.data.root: {split_dir} has no class folders (expected <class>/*.jpg)")
  files = []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    found = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_SUFFIXES))
    if not found:
      raise DataError(f"config.data.root: class folder {class_dir} holds no JPEG or PNG images")
    files += [(os.path.join(name, f), label) for f in found]
  return classes, files


_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _rgb8(im, path: str) -> np.ndarray:
  """The image as 8-bit RGB. 16-bit grayscale PNGs (Pillow modes I;16 and I) are scaled to
  8 bits (Pillow's convert() would clip them: all-white images); 16-bit RGB PNGs Pillow
  already reads as 8-bit RGB."""
  if im.mode in _16_BIT_MODES:
    values = np.asarray(im)
    if values.min() < 0 or values.max() > 65535:
      raise DataError(f"image {path}: {im.mode} pixel values outside 0..65535; give 8- or "
                      "16-bit images")
    gray = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if im.mode in ("F", "I;32", "I;32B"):  # Floating-point or 32-bit TIFF-like data.
    raise DataError(f"image {path}: pixel mode {im.mode} is not an 8- or 16-bit image")
  return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), np.uint8)


def _decode_folder(split_dir: str, files, image_size: int) -> Split:
  """Decodes every image; grayscale, palette and CMYK images become RGB (and are counted)."""
  from PIL import Image
  images, labels, converted = [], [], 0
  for rel, label in files:
    path = os.path.join(split_dir, rel)
    try:
      with Image.open(path) as im:
        if im.mode != "RGB":
          converted += 1
        array = _rgb8(im, path)  # Decodes: truncated files fail here.
    except DataError:
      raise
    except Exception as e:
      raise DataError(f"cannot decode image {path}: {e}") from e
    size = image_size or (images[0].shape[0] if images else array.shape[0])
    if array.shape[:2] != (size, size):
      raise DataError(f"image {path} is {array.shape[1]}x{array.shape[0]}, expected "
                      f"{size}x{size} (config.data.image_size)")
    images.append(array)
    labels.append(label)
  if converted and jax.process_index() == 0:
    print(f"{split_dir}: converted {converted} non-RGB (grayscale, 16-bit, palette, CMYK) "
          "images to 8-bit RGB", flush=True)
  return Split(np.stack(images), np.asarray(labels, np.int32))


def _test_files(root: str, classes: list[str], origin: str):
  test_dir = os.path.join(root, "test")
  if not os.path.isdir(test_dir):
    raise DataError(f"config.data.eval_split='test' but {test_dir} does not exist; "
                    "add it or set config.data.eval_split=validation")
  test_classes, files = _folder_files(test_dir)
  unknown = sorted(set(test_classes) - set(classes))
  if unknown:
    raise DataError(f"{test_dir} has classes not in {origin}: {unknown}")
  remap = {i: classes.index(c) for i, c in enumerate(test_classes)}
  return test_dir, [(f, remap[l]) for f, l in files]


def _mtime_ns(path: str) -> int:
  try:
    return os.stat(path).st_mtime_ns
  except OSError as e:  # A dangling or self-looping symlink, a file removed meanwhile.
    raise DataError(f"cannot read image {path}: {e.strerror}") from e


def _cached_folder(data_config, workdir, split_dir: str, files) -> Split:
  """Decodes a folder once; later loads read DIR/data_cache/<hash>.npz (no pickle)."""
  key = hashlib.sha256(json.dumps(
      [split_dir, data_config.image_size,
       [(f, l, _mtime_ns(os.path.join(split_dir, f))) for f, l in files]]).encode())
  cache = (os.path.join(workdir, "data_cache", f"{key.hexdigest()[:16]}.npz")
           if workdir else None)
  if cache and files_lib.exists(cache):
    try:
      with files_lib.open_read(cache, "rb") as f, np.load(f, allow_pickle=False) as z:
        return Split(z["images"], z["labels"])
    except Exception as e:  # Truncated or garbled (a kill mid-copy, a full disk): rebuild.
      if jax.process_index() == 0:
        print(f"{cache} is unreadable ({type(e).__name__}: {e}); decoding the images again",
              flush=True)
  split = _decode_folder(split_dir, files, data_config.image_size)
  if cache and jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, images=split.images, labels=split.labels)
    files_lib.write_atomic(cache, buffer.getvalue())  # Local or gs://, never half written.
  return split


def _load_image_folder_test(data_config, workdir, classes: list[str]) -> Split:
  root = os.path.abspath(os.path.expanduser(data_config.root))
  test_dir, files = _test_files(root, classes, "the model's classes")
  return _cached_folder(data_config, workdir, test_dir, files)


def _load_image_folder(data_config, workdir, need_test):
  root = os.path.abspath(os.path.expanduser(data_config.root))
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise DataError(f"config.data.root: {root} has no train/ folder (expected "
                    "train/<class>/*.jpg)")
  classes, train_files = _folder_files(train_dir)
  train = _cached_folder(data_config, workdir, train_dir, train_files)
  test = None
  if need_test:
    test_dir, test_files = _test_files(root, classes, "train")
    test = _cached_folder(data_config, workdir, test_dir, test_files)
  if test is not None and test.images.shape[1:] != train.images.shape[1:]:
    raise DataError(f"{root}/test images are {test.images.shape[1:]}, train images "
                    f"{train.images.shape[1:]}")
  return train, test, classes


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(num_examples // batch_size, 1)


class TrainBatches:
  """Global batch of step s = examples of a (seed, epoch)-seeded permutation.

  Each process reads only its rows of the global batch; a background thread assembles
  the next batches while the device computes.
  """

  def __init__(self, split: Split, batch_size: int, seed: int, sharding, prefetch: int = 2):
    self.split, self.batch_size, self.seed, self.sharding = split, batch_size, seed, sharding
    self.steps_per_epoch = steps_per_epoch(len(split), batch_size)
    self._perm_epoch, self._perm = None, None
    n_proc = jax.process_count()
    self._local = slice(jax.process_index() * batch_size // n_proc,
                        (jax.process_index() + 1) * batch_size // n_proc)
    self._prefetch = prefetch

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
      self._perm_epoch = epoch
    return self._perm[i * self.batch_size:(i + 1) * self.batch_size]

  def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
    return self._put(self.indices(step)[self._local])

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, jax.Array, jax.Array]]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      queue = collections.deque()
      step = start_step
      while queue or step < end_step:
        # The permutation cache is not thread-safe: indices are computed here, in order.
        while step < end_step and len(queue) < self._prefetch:
          idx = self.indices(step)[self._local]
          queue.append((step, pool.submit(self._put, idx)))
          step += 1
        s, future = queue.popleft()
        yield (s,) + future.result()

  def _put(self, idx):
    return (jax.make_array_from_process_local_data(self.sharding, self.split.images[idx]),
            jax.make_array_from_process_local_data(self.sharding, self.split.labels[idx]))


def eval_batches(split: Split, batch_size: int, sharding):
  """Yields (images, labels, mask) covering every example: the last batch is padded."""
  n_proc, proc = jax.process_count(), jax.process_index()
  local = batch_size // n_proc
  for start in range(0, len(split), batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < len(split)
    idx = np.where(mask, idx, 0)[proc * local:(proc + 1) * local]
    mask = mask[proc * local:(proc + 1) * local]
    yield tuple(jax.make_array_from_process_local_data(sharding, a)
                for a in (split.images[idx], split.labels[idx], mask))


def augment(images_BxHxWxC: jax.Array, key: jax.Array, mode: str, padding: int) -> jax.Array:
  """Random pad-and-crop (and horizontal flip) inside the jitted step; uint8 in and out."""
  if mode == "none":
    return images_BxHxWxC
  b, h, w, c = images_BxHxWxC.shape
  k_crop, k_flip = jax.random.split(key)
  p = padding
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets_Bx2 = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets_Bx2)
  if mode == "crop_flip":
    flip_B = jax.random.bernoulli(k_flip, 0.5, (b,))
    crop = jnp.where(flip_B[:, None, None, None], crop[:, :, ::-1], crop)
  return crop
