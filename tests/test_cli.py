"""The command line and the public API: tables out, one clear line for bad input."""

import subprocess
import sys

import pytest

import roadmap
from roadmap import ConfigError
from roadmap.inspect import step_rows


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "roadmap.inspect", *args], capture_output=True, text=True)


def test_inspect_counts_every_step_beside_table_10():
    rows = step_rows(list(roadmap.STEPS), ["regime=r50"])
    assert [r["step"] for r in rows] == list(roadmap.STEPS)
    assert sum(r["ok"] for r in rows) == 15
    assert {r["step"] for r in rows if not r["ok"]} == {r["step"] for r in rows if r["explained"]} == {
        "layer_norm", "separate_downsampling"}


def test_inspect_counts_every_step_beside_table_11_for_r200():
    assert all(r["ok"] for r in step_rows(list(roadmap.STEPS), ["regime=r200"]))


def test_inspect_takes_a_list_of_steps_and_overrides_and_prints_the_table():
    out = inspect("+step=wider,gelu", "model.kernel_size=5")
    assert out.returncode == 0, out.stderr
    assert "regime micro" in out.stdout and "\n| wider " in out.stdout and "\n| gelu " in out.stdout
    assert "paper GFLOPs" not in out.stdout  # no paper columns for the micro regime
    rows = step_rows(["wider", "gelu"], ["model.kernel_size=5"])
    assert [r["regime"] for r in rows] == ["micro", "micro"] and "paper_gflops" not in rows[0]


def test_a_table_for_the_terminal_is_the_file_table_padded_numbers_to_the_right():
    from roadmap.tables import markdown_lines

    head, rows = ["step", "top-1"], [["resnet", "88.68"], ["separate_downsampling", "-1.5"]]
    plain, aligned = markdown_lines(head, rows), markdown_lines(head, rows, aligned=True)
    assert plain[0] == "| step | top-1 |" and plain[2] == "| resnet | 88.68 |"
    assert len({len(line) for line in aligned}) == 1
    assert aligned[2] == "| resnet                | 88.68 |" and aligned[3].endswith("|  -1.5 |")
    assert [[c.strip() for c in line.strip("|").split("|")] for line in aligned[2:]] == rows


BAD = [
    (["+step=nonexistent"], "unknown step 'nonexistent': choose one of resnet, modern_recipe"),
    (["+step=resnet", "model.foo=1"], "unknown config key 'model.foo': valid keys in model are depths, widths"),
    (["+step=kernel_7", "model.kernel_size=4"], "model.kernel_size=4 is not valid: choose one of 3, 5, 7, 9, 11"),
    (["+step=resnet", "model.depths=[3,-1,9,3]"], "has -1: every entry must be a positive integer"),
    (["+step=resnet", "model.depths=[3,3,9]"], "model.depths has 3 stages but model.widths has 4"),
    (["+step=resnet", "model.in_chans=3"], "model.in_chans=3 conflicts with data.channels=1"),
    (["+step=separate_downsampling", "data.image_size=16"], "data.image_size=16 conflicts with model.stem=patchify"),
    (
        ["+step=resnet", "model.block=dense"],
        "bad value for 'model.block': Invalid value 'dense', expected one of [bottleneck",
    ),
    (["+step=resnet", "regime=r101"], "unknown regime 'r101': choose one of micro, r200, r50"),
    (["+step=resnet", "model.depthwise=maybe"], "bad value for 'model.depthwise'"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_non_zero_with_one_line_naming_it(args, message):
    out = inspect(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_compose_raises_the_same_one_line_error(args, message):
    step = args[0].split("=", 1)[1]
    with pytest.raises(ConfigError) as err:
        roadmap.compose(step, *args[1:])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_public_api():
    cfg = roadmap.compose("patchify_stem", "regime=r50", "data=imagenet")
    assert cfg.model.stem == "patchify" and cfg.step.name == "patchify_stem"
    model = roadmap.build_model(cfg)
    c = roadmap.complexity(model, 224)
    assert c.gmacs == pytest.approx(4.42, abs=0.005) and c.params == roadmap.complexity(cfg, 224).params
    assert roadmap.build_model(roadmap.ModelConfig()).fc.out_features == 1000  # the defaults are ResNet-50
    with pytest.raises(ConfigError, match="compose\\(\\) takes one step"):
        roadmap.compose("all")


def test_help_explains_usage():
    out = inspect("--help")
    assert out.returncode == 0 and "+step=all" in out.stdout


# ----------------------------------------------------------------------------- Hydra's private parts


def test_hydra_is_the_release_its_private_parts_were_checked_against():
    import hydra

    from roadmap.cli import HYDRA_CHECKED

    assert hydra.__version__.split(".")[:2] == HYDRA_CHECKED.split(".")[:2], (
        f"hydra-core {hydra.__version__} is installed; roadmap.cli's private parts were checked against "
        f"{HYDRA_CHECKED}: recheck them (tests below) and update HYDRA_CHECKED")


def test_hydras_own_parser_takes_its_flags_and_the_overrides_and_refuses_through_us():
    from roadmap.cli import SHOW_FLAGS, hydra_flags

    def refuse(message):
        raise ConfigError(message)

    flags = hydra_flags(["--cfg", "job", "-p", "step", "+step=resnet", "seed=1"], refuse)
    assert flags.cfg == "job" and flags.package == "step" and flags.overrides == ["+step=resnet", "seed=1"]
    assert all(hasattr(flags, f) for f in SHOW_FLAGS)
    with pytest.raises(ConfigError, match="unrecognized arguments: --no-such-flag"):
        hydra_flags(["--no-such-flag"], refuse)


def test_hydra_main_runs_the_job_on_the_given_command_line_named_after_the_task(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from roadmap.cli import hydra_app

    seen = []

    def job(cfg):
        seen.append((cfg.seed, cfg.step.name, HydraConfig.get().job.name, HydraConfig.get().runtime.output_dir))

    monkeypatch.setattr(sys, "argv", ["prog", "--this-is-not-read"])
    hydra_app(job, ["+step=gelu", "seed=4", f"hydra.run.dir={tmp_path / 'run'}"], "train")
    assert seen == [(4, "gelu", "train", str(tmp_path / "run"))]


def test_no_module_but_the_cli_touches_hydras_private_parts_or_sys_argv():
    import ast
    from pathlib import Path

    root = Path(roadmap.__file__).parent
    offenders = []
    for path in [*root.glob("*.py"), *(root.parent / "analysis").glob("*.py")]:
        tree = ast.parse(path.read_text())
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and path.name == "cli.py"
                   and f.name in ("hydra_flags", "hydra_app") for n in ast.walk(f)}
        for node in ast.walk(tree):
            private = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hydra._internal")
            argv = isinstance(node, ast.Assign) and any(ast.unparse(t) == "sys.argv" for t in node.targets)
            if (private or argv) and id(node) not in allowed:
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders
