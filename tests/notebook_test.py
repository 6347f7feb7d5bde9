"""The Colab demo runs headless, top to bottom, on CPU."""

import os

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_demo_notebook_executes(tmp_path):
  path = os.path.join(ROOT, "notebooks", "demo.ipynb")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "full exit" in text and "DNNet:" in text and "predictions:" in text
  assert any(o.get("output_type") == "display_data" for c in nb.cells
             for o in c.get("outputs", []))  # The grids were drawn.
