"""The notebooks of `experiments/notebooks/` run top to bottom, so they cannot rot; and they are committed
without outputs, so their diffs stay readable.

Each notebook runs in a fresh ipykernel started from this interpreter (`sys.executable`), in the
notebook's own folder, with the repository on PYTHONPATH, the small switch set (`SEQJAX_NOTEBOOK_SMALL=1`:
1–2 minutes each on 2 CPU cores), the Agg backend (no display), and its own data folder. A failing
cell fails the test with the cell's number, its source and the error.

Running them needs nbclient, nbformat and ipykernel (the `notebook` extra); without them the run tests
are skipped, naming what is missing. Strip outputs before committing, e.g.
`jupyter nbconvert --clear-output --inplace experiments/notebooks/*.ipynb`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "experiments" / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
#: Seconds one cell may take at the small size (the training cell takes about 30 s on 2 loaded cores).
CELL_TIMEOUT = 600
_MISSING = [name for name in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(name) is None]


def test_the_notebooks_exist():
    assert {"quickstart.ipynb", "results.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    notebook = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{name}: code cells {dirty} keep outputs or execution counts; strip them before committing "
        f"(jupyter nbconvert --clear-output --inplace experiments/notebooks/{name})"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_cell_has_a_unique_id(name):
    # nbformat 4.5 requires cell ids; a cell added without one warns now and will be an error in nbformat
    cells = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))["cells"]
    missing = [i for i, cell in enumerate(cells) if not cell.get("id")]
    assert not missing, f"{name}: cells {missing} have no id; give each a unique one (nbformat 4.5)"
    ids = [cell["id"] for cell in cells]
    assert len(set(ids)) == len(ids), f"{name}: repeated cell ids"


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernel runs `sys.executable -m ipykernel_launcher`, so the notebook
    sees this interpreter's packages whatever kernelspecs the machine has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = tmp_path / "kernels" / "seqjax-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "seqjax test kernel",
                "language": "python",
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="seqjax-test", kernel_spec_manager=specs)


def _kernel_environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        SEQJAX_NOTEBOOK_SMALL="1",
        MPLBACKEND="Agg",
        SEQJAX_DATA_DIR=str(tmp_path / "datasets"),  # hermetic: the embedded sample is prepared here
        JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"),
    )
    # The suite's 8 fake CPU devices (tests/conftest.py) would make the notebooks' single-device runs
    # unlike a user's: the kernel gets one device. The suite's faster-compiling flags stay.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.mark.skipif(
    bool(_MISSING), reason=f"running notebooks needs {', '.join(_MISSING)} (the notebook extra)"
)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, request):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    km = _kernel_manager(tmp_path)
    # nbclient shuts down only the kernels it creates: one started from a manager passed in stays alive
    # (1.3 GB and some CPU each, for the rest of the suite) unless shut down here.
    request.addfinalizer(lambda: km.shutdown_kernel(now=True) if km.has_kernel else None)
    client = NotebookClient(
        notebook,
        km=km,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working folder
    )
    start = time.perf_counter()
    try:
        client.execute(env=_kernel_environment(tmp_path))
    except (CellExecutionError, CellTimeoutError) as error:
        failed = next(
            (
                (i, cell)
                for i, cell in enumerate(notebook.cells)
                if cell.cell_type == "code"
                and any(output.get("output_type") == "error" for output in cell.get("outputs", []))
            ),
            None,
        )
        where = f"code cell {failed[0]}:\n{failed[1].source}\n" if failed else ""
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # IPython colours its tracebacks
        pytest.fail(f"{name} fails at {where}\n{message}", pytrace=False)
    print(f"{name}: {time.perf_counter() - start:.0f} s")
