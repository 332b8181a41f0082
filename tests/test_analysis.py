"""Results API, figures and the notebook, on a study made by a smoke sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import roadmap.results as R
from tests.conftest import set_top1

ROOT = Path(__file__).resolve().parent.parent


LEARNED = {"resnet": 70.0, "modern_recipe": 73.0, "move_up_depthwise": 72.0, "kernel_5": 72.5, "kernel_7": 71.5}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A smoke sweep of five steps and two seeds, one run left 'running' and one failed; each
    run's top-1 set to LEARNED[step] + seed (these tests read studies, they do not judge learning)."""
    path = tmp_path_factory.mktemp("study") / "smoke_study"
    out = subprocess.run(
        [sys.executable, "-m", "roadmap.sweep", "+step=resnet,modern_recipe,move_up_depthwise,kernel_5,kernel_7",
         "seed=0,1", "+experiment=smoke", "recipe.epochs=1", f"hydra.sweep.dir={path}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    set_top1(path, lambda step, seed: LEARNED[step] + seed)
    s = json.loads((path / "kernel_5" / "seed1" / "summary.json").read_text())
    (path / "kernel_5" / "seed1" / "summary.json").write_text(json.dumps({**s, "status": "running", "top1": None}))
    s = json.loads((path / "kernel_7" / "seed1" / "summary.json").read_text())
    (path / "kernel_7" / "seed1" / "summary.json").write_text(json.dumps({**s, "status": "failed"}))
    return path


@pytest.mark.slow
def test_load_gives_one_row_per_run_with_the_config_flattened(study):
    runs = R.load(study)
    assert len(runs) == 10
    assert list(runs["step"].unique()) == ["resnet", "modern_recipe", "move_up_depthwise", "kernel_5", "kernel_7"]
    assert {"study", "step", "order", "regime", "data", "seed", "status", "params", "gmacs", "top1", "top5",
            "images_per_s", "wall_time_s", "cfg.model.kernel_size", "cfg.recipe.name"} <= set(runs.columns)
    assert runs.loc[runs["step"] == "kernel_5", "cfg.model.kernel_size"].tolist() == [5, 5]
    assert sorted(runs["status"].unique()) == ["completed", "failed", "running"]
    assert len(R.load(str(study / "*" / "seed0"))) == 5  # a glob of run directories


@pytest.mark.slow
def test_history_is_long_form_per_epoch(study):
    h = R.history(study)
    assert set(h.columns) == {"study", "step", "seed", "epoch", "metric", "value"}
    assert {"train_loss", "top1", "lr"} <= set(h["metric"])
    assert len(h[(h["metric"] == "top1")]) == 10


@pytest.mark.slow
def test_the_step_table_averages_completed_seeds_and_sits_beside_the_paper(study):
    t = R.step_table(R.load(study)).set_index("step")
    assert t.loc["resnet", "seeds"] == 2 and t.loc["kernel_5", "seeds"] == 1  # the running seed is not averaged
    assert t.loc["kernel_5", "builds_on"] == "move_up_depthwise" and bool(t.loc["kernel_5", "side_branch"])
    assert t.loc["kernel_5", "paper_delta"] == pytest.approx(80.35 - 79.92)
    assert t.loc["modern_recipe", "delta"] == pytest.approx(
        t.loc["modern_recipe", "top1_mean"] - t.loc["resnet", "top1_mean"]
    )
    assert "running: 1" in t.loc["kernel_5", "statuses"]


@pytest.mark.slow
def test_make_plots_writes_every_figure_and_table(study):
    out = subprocess.run([sys.executable, "-m", "analysis.plots", str(study)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in ("figure2", "path", "deltas", "curves"):
        for ext in ("png", "pdf"):
            assert (study / "figures" / f"{name}.{ext}").stat().st_size > 5000
    md = (study / "figures" / "table.md").read_text()
    assert "| kernel_5 | depthwise kernel 3x3 -> 5x5 |" in md and "paper top-1 (r50)" in md


def test_plots_name_a_missing_study():
    out = subprocess.run(
        [sys.executable, "-m", "analysis.plots", "/nonexistent/study"], capture_output=True, text=True, cwd=ROOT
    )
    assert (
        out.returncode == 2
        and out.stderr.strip()
        == "error: /nonexistent/study is not a directory: "
        "give study directories such as experiments/fashion_mnist_micro"
    )


@pytest.mark.slow
def test_the_notebook_runs_against_a_study(study, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "analysis" / "study.ipynb", as_version=4)
    import os

    os.environ["ROADMAP_STUDY"] = str(study)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "analysis")}}
        ).execute()
    finally:
        del os.environ["ROADMAP_STUDY"]
    text = "\n".join(
        str(o.get("text", o.get("data", {}).get("text/plain", "")))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "10 runs" in text and "change top-1 in the paper's direction" in str(nb.cells[7].outputs)
