"""A new user's first minutes: the default command trains, nothing it writes is tracked
by git, the package builds without a warning, and the apps behave like Hydra apps."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import roadmap
import roadmap.results as R
from roadmap.config import hydra_config

ROOT = Path(__file__).resolve().parent.parent
# The default command, smoke-sized: the same study directory (train_limit and epochs do not name it).
SMALL = ("data.train_limit=256", "data.test_limit=256", "recipe.epochs=1", "recipe.batch_size=128")


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)


def app(module, *args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", f"roadmap.{module}", *args], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def test_the_default_study_directory_holds_no_committed_runs_and_is_ignored_by_git():
    default = Path(hydra_config("resnet", []).sweep.dir)
    assert default == Path("runs/fashion_mnist_micro")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert git("ls-files", "--", str(default)).stdout == ""  # nothing committed where make run writes
    assert git("check-ignore", "-q", str(default / "resnet" / "seed0" / "summary.json")).returncode == 0


@pytest.mark.slow
def test_the_default_command_really_trains_every_step_on_a_fresh_checkout(tmp_path):
    """`make run` is `python -m roadmap.sweep +step=all`; run from an empty directory as a
    fresh clone's root would be, it trains all 17 steps rather than finding them done."""
    out = app("sweep", "+step=all", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "nothing to do" not in out.stdout
    runs = R.load(tmp_path / "runs" / "fashion_mnist_micro")
    assert list(runs["step"]) == list(roadmap.STEPS)
    assert set(runs["status"]) == {"completed"} and set(runs["epochs_done"]) == {1}


def test_the_reference_study_stays_readable_where_no_default_run_writes():
    reference = ROOT / "experiments" / "fashion_mnist_micro"
    runs = R.load(reference)
    assert len(runs) == 51 and set(runs["status"]) == {"completed"} and set(runs["study"]) == {"fashion_mnist_micro"}
    assert Path(hydra_config("resnet", []).sweep.dir).resolve() != reference.resolve()


@pytest.mark.slow
def test_the_package_builds_without_a_single_warning(tmp_path):
    src = tmp_path / "src"
    files = (
        git("ls-files", "--cached", "--others", "--exclude-standard").stdout.split()
        if (ROOT / ".git").exists()
        else None
    )
    if files:
        for f in files:
            if (ROOT / f).is_file() and not f.startswith("experiments/"):
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, src / f)
    else:
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "experiments", "runs", "*.egg-info", "build"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    setuptools_lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "Warning" in ln or "!!" in ln]
    assert setuptools_lines == []
    import zipfile

    names = zipfile.ZipFile(next((tmp_path / "dist").glob("roadmap-*.whl"))).namelist()
    assert "roadmap/paper_roadmap.csv" in names and "roadmap/conf/step/gelu.yaml" in names
    assert "roadmap/conf/hydra/help/roadmap.yaml" in names


# ----------------------------------------------------------------------------- Hydra's conventions


@pytest.mark.parametrize("module", ["train", "sweep"])
def test_help_shows_the_usage_then_hydras_listing_of_config_groups(module):
    out = app(module, "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(__import__(f"roadmap.{module}", fromlist=["x"]).__doc__.strip().splitlines()[0])
    groups = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = {ln.split(":")[0]: ln.split(": ")[1].split(", ") for ln in groups.splitlines() if ": " in ln}
    assert listed["regime"] == ["micro", "r200", "r50"]
    assert set(roadmap.STEPS) == set(listed["step"])
    assert {"data", "recipe", "budget", "experiment", "logger"} <= set(listed)


@pytest.mark.parametrize("flags", [("--cfg", "job"), ("--cfg=job",), ("-c", "job")])
def test_cfg_job_prints_the_composed_config_and_runs_nothing(flags, tmp_path):
    out = app("train", "+step=gelu", "model.kernel_size=5", f"hydra.run.dir={tmp_path / 'run'}", *flags)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["step"]["name"] == "gelu" and cfg["model"]["kernel_size"] == 5 and cfg["model"]["activation"] == "gelu"
    assert not (tmp_path / "run").exists()


def test_cfg_job_with_a_package_prints_that_package():
    out = app("train", "+step=gelu", "-c", "job", "--package", "step")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == {"name": "gelu", "change": "ReLU -> GELU", "reference": None}


def test_a_sweeps_cfg_shows_its_first_run():
    out = app("sweep", "+step=all", "seed=0,1", "--cfg", "job", "--package", "step")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["name"] == "resnet"
    assert "the config of the first of 34 runs" in out.stderr


@pytest.mark.slow
def test_info_and_shell_completion_answer_as_in_any_hydra_app():
    info = app("train", "+step=gelu", "--info", "defaults")
    assert info.returncode == 0 and "step/gelu" in info.stdout and "recipe/convnext" in info.stdout
    install = app("sweep", "-sc", "install=bash")
    assert install.returncode == 0 and "complete -o nospace" in install.stdout
    import os

    query = subprocess.run(
        [sys.executable, "-m", "roadmap.train", "-sc", "query=bash"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COMP_LINE": "roadmap-train +step=kernel_", "COMP_POINT": "26"},
    )
    assert query.stdout.split() == ["+step=kernel_11", "+step=kernel_5", "+step=kernel_7", "+step=kernel_9"]


def test_a_value_hydra_cannot_read_says_to_quote_it():
    out = app("train", "+step=gelu", "hydra.run.dir=/tmp/ü x")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: 'hydra.run.dir=/tmp/ü x' cannot be read as an override: quote a value with spaces or non-ASCII "
        "characters, as in \"hydra.run.dir='/tmp/ü x'\""]
