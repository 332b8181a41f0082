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
    assert "regime micro" in out.stdout and "\nwider " in out.stdout and "\ngelu " in out.stdout
    assert "paper GFLOPs" not in out.stdout  # no paper columns for the micro regime
    rows = step_rows(["wider", "gelu"], ["model.kernel_size=5"])
    assert [r["regime"] for r in rows] == ["micro", "micro"] and "paper_gflops" not in rows[0]


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
