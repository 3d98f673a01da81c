"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel, in quick mode.

The kernel is ipykernel's ``python3`` of this interpreter (its kernelspec is installed into
``sys.prefix`` if the environment lacks one); ``BLINDFED_NOTEBOOK_QUICK=1`` in its environment
shrinks epochs and samples (each notebook reads it in its first code cell). Skipped when
nbclient, nbformat or ipykernel are not installed.
"""

import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.fixture(scope="module")
def kernel_name() -> str:
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def ours() -> bool:
        # jupyter_client runs a spec whose command is a plain "python" with this interpreter.
        try:
            command = KernelSpecManager().get_kernel_spec("python3").argv[0]
        except NoSuchKernel:
            return False
        major, minor = sys.version_info[:2]
        plain = {"python", f"python{major}", f"python{major}.{minor}"}
        return command in plain or Path(command).resolve() == Path(sys.executable).resolve()

    if not ours():  # none, or another environment's: install this one's into sys.prefix
        import ipykernel.kernelspec

        ipykernel.kernelspec.install(user=False, prefix=sys.prefix)
        assert ours(), "a python3 kernelspec of another interpreter takes precedence"
    return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is saved with outputs: clear them"
    )
    monkeypatch.setenv("BLINDFED_NOTEBOOK_QUICK", "1")  # inherited by the kernel
    client = NotebookClient(
        nb, timeout=600, kernel_name=kernel_name, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback
