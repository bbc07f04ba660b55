"""Every notebook in notebooks/ runs with ``smoke=True`` (tiny random model, shipped corpora and DEMO items,
offline, CPU), as papermill would run it: the parameters are injected in a cell after the one tagged
``parameters``. The notebooks share one workdir in a temp dir (02 reuses 01's checkpoint and stores, as
on Colab). The committed notebooks carry no outputs and are set for a Colab TPU runtime."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the notebooks executed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
# 12 sentences of three languages (English, a Latin and a non-Latin script) and two MGSM languages
# (English and one other, for the non-English rows) keep it fast
SMOKE = {"smoke": True, "max_sentences": 12, "languages": ["eng_Latn", "fra_Latn", "zho_Hans"],
         "mgsm_languages": ["en", "zh"], "checkout": ROOT}
# what each notebook must print once it has run (its last steps' outputs)
EXPECTED = {"01_routing_quickstart.ipynb": ["mean divergence over the middle band", "eng_Latn ", "image/png"],
            "02_steering.ipynb": ["random (soft)  non-English", "McNemar p=", "image/png", "compiles:"]}


def test_notebooks_are_committed_clean_and_set_for_colab_tpu():
    assert [os.path.basename(p) for p in NOTEBOOKS] == sorted(EXPECTED)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["accelerator"] == "TPU" and "colab" in nb.metadata, path
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path}: outputs not stripped"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "smoke = False" in params[0].source, path


def inject(nb, values):
    """papermill's semantics: a cell after the ``parameters`` cell overrides its values."""
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("notebooks") / "work")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, shared_workdir, tmp_path):
    nb = nbformat.read(path, as_version=4)
    inject(nb, dict(SMOKE, workdir=shared_workdir))
    env_cwd = str(tmp_path)  # the kernel runs in a temp dir: the notebook finds the checkout itself
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": env_cwd}}).execute()
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            text.append(o.get("text", ""))
            text += [str(v) for v in o.get("data", {}).values()] + list(o.get("data", {}))
    joined = "\n".join(text)
    for expected in EXPECTED[os.path.basename(path)]:
        assert expected in joined, f"{os.path.basename(path)}: no {expected!r} in its outputs"
