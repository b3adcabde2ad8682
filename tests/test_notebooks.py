"""The notebooks under notebooks/ are stored without outputs and run top to bottom (a cell that
raises fails the test), and `import vib_jax.losses` stays light."""

import os
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")


def read(name):
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def test_the_notebooks_are_stored_without_outputs():
    names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
    assert names == ["analyse_a_sweep.ipynb", "losses_tour.ipynb"]
    for name in names:
        for cell in read(name).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def execute(name):
    notebook = read(name)
    started = time.perf_counter()
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
    )
    client.execute(env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
    print(f"{name} ran in {time.perf_counter() - started:.1f} s")
    return notebook


def test_losses_tour_runs_and_imports_only_the_math():
    notebook = execute("losses_tour.ipynb")
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "from vib_jax import losses" in sources
    assert "vib_jax." not in sources.replace("vib_jax.losses", "")  # nothing else of the library
    text = "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "closed form" in text and "beta  1.0000" in text


@pytest.mark.real_data
@pytest.mark.usefixtures("real_mnist")
def test_analyse_a_sweep_runs():
    notebook = execute("analyse_a_sweep.ipynb")
    images = [
        o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2  # the information plane with the error, and the stddev histograms


def test_importing_the_losses_loads_no_data_checkpoint_or_plotting_library():
    code = (
        "import sys, time; started = time.perf_counter(); import vib_jax.losses; "
        "print(time.perf_counter() - started); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow_datasets', 'orbax', 'matplotlib', 'flax', 'optax', 'ml_collections'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seconds, heavy = result.stdout.strip().splitlines()
    assert heavy == "[]", heavy
    print(f"import vib_jax.losses: {float(seconds):.2f} s")
