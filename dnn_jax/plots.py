"""Annotated depth x width heatmaps."""

from __future__ import annotations

import io

import numpy as np

from dnn_jax import files


def grid_heatmap(values_LxG, path: str, title: str, *, fmt: str = "{:.1f}",
                 scale: float = 1.0, cbar_label: str = "", annotate: bool = True,
                 mask=None) -> None:
  """Writes a heatmap of a depths x widths grid (row 1 = shallowest exit) to `path`."""
  depths, widths = np.shape(values_LxG)
  fig = figure(figsize=(1.5 + 0.42 * max(widths, 10), 1.0 + 0.36 * max(depths, 6)))
  ax = fig.subplots()
  im = draw_grid(ax, values_LxG, title, fmt=fmt, scale=scale, annotate=annotate, mask=mask)
  fig.colorbar(im, ax=ax, label=cbar_label)
  save(fig, path)


def draw_grid(ax, values_LxG, title: str, *, fmt: str = "{:.1f}", scale: float = 1.0,
              annotate: bool = True, mask=None, vmin=None, vmax=None, column_labels=None):
  """Draws an annotated depths x widths grid on `ax`; returns the image (for a colorbar).
  Cells outside `mask` are left blank."""
  values = np.asarray(values_LxG, np.float64) * scale
  if mask is not None:
    values = np.where(mask, values, np.nan)
  depths, widths = values.shape
  im = ax.imshow(values, origin="lower", cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
  labels = column_labels if column_labels is not None else [str(w + 1) for w in range(widths)]
  ax.set_xticks(range(widths), labels)
  ax.set_yticks(range(depths), [str(d + 1) for d in range(depths)])
  ax.set_xlabel("width (channel groups)")
  ax.set_ylabel("depth (exit)")
  ax.set_title(title)
  lo = np.nanmin(values) if vmin is None else vmin
  hi = np.nanmax(values) if vmax is None else vmax
  font = 8 if widths <= 12 else 5
  for d in range(depths if annotate else 0):
    for w in range(widths):
      v = values[d, w]
      if np.isnan(v):
        continue
      dark = (v - lo) < 0.6 * (hi - lo) if hi > lo else True
      ax.text(w, d, fmt.format(v), ha="center", va="center", fontsize=font,
              color="white" if dark else "black")
  return im


def figure(**kwargs):
  """A matplotlib Figure outside pyplot: no backend is switched, nothing leaks."""
  from matplotlib.figure import Figure
  return Figure(**kwargs)


def save(fig, path: str, dpi: int = 120) -> None:
  """Writes `fig` as PNG atomically: rendered in memory, then `files.write_atomic`."""
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=dpi)
  files.write_atomic(path, png.getvalue())
