"""The roadmap is data: each step is the one before it plus its own change."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import roadmap
from roadmap.config import CONF_DIR, SIDE_BRANCHES

# step -> (the step it builds on, the model fields it changes)
PATH = {
    "modern_recipe": ("resnet", {"drop_path_rate", "layer_scale", "init"}),
    "stage_ratio": ("modern_recipe", {"depths"}),
    "patchify_stem": ("stage_ratio", {"stem"}),
    "depthwise_conv": ("patchify_stem", {"depthwise"}),
    "wider": ("depthwise_conv", {"widths"}),
    "inverted_bottleneck": ("wider", {"block"}),
    "move_up_depthwise": ("inverted_bottleneck", {"block"}),
    "kernel_5": ("move_up_depthwise", {"kernel_size"}),
    "kernel_7": ("move_up_depthwise", {"kernel_size"}),
    "kernel_9": ("move_up_depthwise", {"kernel_size"}),
    "kernel_11": ("move_up_depthwise", {"kernel_size"}),
    "gelu": ("kernel_7", {"activation"}),
    "fewer_activations": ("gelu", {"fewer_activations"}),
    "fewer_norms": ("fewer_activations", {"fewer_norms"}),
    "layer_norm": ("fewer_norms", {"norm"}),
    "separate_downsampling": ("layer_norm", {"separate_downsampling"}),
}


def test_the_path_has_the_papers_seventeen_steps_in_order():
    assert roadmap.STEPS == (
        "resnet", "modern_recipe", "stage_ratio", "patchify_stem", "depthwise_conv", "wider",
        "inverted_bottleneck", "move_up_depthwise", "kernel_5", "kernel_7", "kernel_9", "kernel_11",
        "gelu", "fewer_activations", "fewer_norms", "layer_norm", "separate_downsampling",
    )
    assert sorted(p.stem for p in (CONF_DIR / "step").glob("*.yaml")) == sorted(roadmap.STEPS)
    assert roadmap.expand_steps("all") == list(roadmap.STEPS)


@pytest.mark.parametrize("step", roadmap.STEPS)
def test_each_step_file_names_itself_cites_the_paper_and_is_short(step):
    text = (CONF_DIR / "step" / f"{step}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "Section 2" in text
    assert len(text.splitlines()) <= 25
    assert roadmap.compose(step).step.name == step


@pytest.mark.parametrize("regime", ["r50", "r200", "micro"])
@pytest.mark.parametrize("step", list(PATH))
def test_each_step_is_the_previous_plus_its_own_change(step, regime):
    parent, changed = PATH[step]
    assert roadmap.config.PARENTS[step] == parent
    here = OmegaConf.to_container(roadmap.compose(step, f"regime={regime}").model)
    before = OmegaConf.to_container(roadmap.compose(parent, f"regime={regime}").model)
    differs = {k for k in here if here[k] != before[k]}
    if regime == "r200" and step == "stage_ratio":
        changed = {"depths", "widths"}  # r200 also widens 64 -> 84 here
    assert differs == changed


def test_r200_stage_ratio_also_widens_64_to_84_and_wider_goes_to_128():
    assert roadmap.compose("resnet", "regime=r200").model.widths[0] == 64
    assert roadmap.compose("stage_ratio", "regime=r200").model.widths[0] == 84
    assert roadmap.compose("wider", "regime=r200").model.widths == [128, 256, 512, 1024]
    assert roadmap.compose("stage_ratio", "regime=r200").model.depths == [3, 3, 27, 3]


def test_kernel_side_branches_are_not_on_the_main_path():
    assert set(SIDE_BRANCHES) == {"kernel_5", "kernel_9", "kernel_11"}
    assert roadmap.compose("gelu").model.kernel_size == 7


def test_step_files_refer_to_the_regime_never_to_hardcoded_widths():
    for path in (CONF_DIR / "step").glob("*.yaml"):
        body = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
        for ln in body:
            if ln.strip().startswith(("depths:", "widths:")):
                assert "${regime." in ln, f"{path.name}: {ln}"


def test_micro_keeps_the_r50_ratios():
    micro = roadmap.compose("resnet").regime
    assert micro.name == "micro"
    assert micro.depths[2] == 3 * micro.depths[0]  # 1:1:3:1
    assert micro.wider_widths[0] * 2 == micro.stage_ratio_widths[0] * 3  # x1.5, as 64 -> 96


def test_a_new_step_file_joins_the_path(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF_DIR, conf)
    (conf / "step" / "my_step.yaml").write_text(
        "# @package _global_\n# Section 2 and beyond: a wider ConvNeXt.\n"
        "defaults:\n  - separate_downsampling\nstep:\n  name: my_step\n  change: wider\nmodel:\n  expansion: 6\n"
    )
    monkeypatch.setattr("roadmap.config.CONF_DIR", Path(conf))
    assert roadmap.expand_steps("all")[-1] == "my_step"
    assert roadmap.compose("my_step").model.expansion == 6
