"""Every step where users already work: timm models, torch.hub entries, detection backbones, exported graphs."""

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import timm.data
import timm.loss
import timm.optim
import torch
import torchvision
from torchvision.ops import FeaturePyramidNetwork

import roadmap
from roadmap import export
from roadmap.complexity import complexity
from roadmap.config import available_steps, options
from roadmap.model import ConvNet, num_params
from roadmap.timm_models import TimmConvNet, composed
from tests.test_endpoints import randomize

ROOT = Path(__file__).resolve().parent.parent
NAMES = roadmap.register_timm()
PAIRS = [(regime, step) for regime in options("regime") for step in available_steps()]
STEPS = available_steps()
ENDS = {"roadmap_r50_resnet": 25_557_032, "roadmap_r50_separate_downsampling": 28_589_128,
        "roadmap_r200_resnet": 64_673_832, "roadmap_r200_separate_downsampling": 88_591_464}


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def cheap_model(name, **kwargs):
    """A real model for shapes: built on the meta device, then given memory and random weights (a fraction of the
    cost of initialising an r50 network)."""
    return randomize(meta_model(name, **kwargs).to_empty(device="cpu"))


def images(side=64, chans=3, batch=2):
    return torch.randn(batch, chans, side, side)


# ----------------------------------------------------------------------------- timm: names, shapes, configs


def test_every_step_of_every_regime_is_a_timm_model_named_roadmap_regime_step():
    assert len(PAIRS) >= 17 * 3
    assert NAMES == [f"roadmap_{regime}_{step}" for regime, step in PAIRS]
    assert sorted(timm.list_models("roadmap_*")) == sorted(NAMES)
    assert sorted(timm.list_pretrained("roadmap_*")) == ["roadmap_r200_separate_downsampling.fb_in1k",
                                                         "roadmap_r50_resnet.tv_in1k",
                                                         "roadmap_r50_separate_downsampling.fb_in1k"]
    assert roadmap.timm_name("gelu") == "roadmap_r50_gelu" and roadmap.register_timm() == NAMES  # idempotent


@pytest.mark.parametrize("regime,step", PAIRS, ids=[f"{r}-{s}" for r, s in PAIRS])
def test_create_model_builds_the_step_with_its_parameters_and_its_recipes_eval_config(regime, step):
    name = f"roadmap_{regime}_{step}"
    model = meta_model(name)
    cfg, recipe = composed(regime, step)
    assert isinstance(model, TimmConvNet) and model.cfg == cfg
    assert num_params(model) == complexity(cfg).params == ENDS.get(name, num_params(model))
    data = timm.data.resolve_data_config({}, model=model)
    assert data == dict(input_size=(3, 224, 224), interpolation=recipe["interpolation"], crop_pct=0.875,
                        crop_mode="center", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    # the registry's config, read without composing, says the same
    assert timm.models.get_pretrained_cfg(name).interpolation == recipe["interpolation"]


def test_resolve_data_config_gives_each_recipes_interpolation_and_the_eval_transform():
    interpolation = {s: timm.data.resolve_data_config({}, model=meta_model(f"roadmap_r50_{s}"))["interpolation"]
                     for s in ("resnet", "modern_recipe", "separate_downsampling")}
    assert interpolation == {"resnet": "bilinear", "modern_recipe": "bicubic", "separate_downsampling": "bicubic"}
    assert interpolation["resnet"] == roadmap.compose("resnet").recipe.interpolation.value
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=meta_model("roadmap_r50_resnet")))
    resize, crop = transform.transforms[:2]
    assert (resize.size, resize.interpolation.value, crop.size) == (256, "bilinear", (224, 224))


def test_timms_keyword_arguments_shape_the_network():
    model = timm.create_model("roadmap_micro_gelu", num_classes=10, in_chans=1, drop_path_rate=0.2, global_pool="max")
    assert (model.num_classes, model.get_classifier().out_features, model.stem.conv.in_channels) == (10, 10, 1)
    assert model.stages[-1].blocks[-1].drop_path.p == pytest.approx(0.2)
    model.eval()
    x = images(chans=1)
    with torch.no_grad():
        pooled = model.head_norm(model.forward_features(x).amax((2, 3)))
        assert torch.equal(model(x), model.fc(pooled))
    assert meta_model("roadmap_r50_gelu", drop_rate=0.3).head_drop.p == 0.3
    assert next(timm.create_model("roadmap_r50_gelu", device="meta", dtype=torch.float64).parameters()).dtype \
        == torch.float64


def test_the_timm_model_is_the_roadmaps_network_logit_for_logit():
    ours = ConvNet(composed("micro", "gelu")[0]).eval()
    model = timm.create_model("roadmap_micro_gelu").eval()
    model.load_state_dict(ours.state_dict())
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
        features = model.forward_features(x)
        assert features.shape == (2, 192, 2, 2)
        assert torch.equal(model.forward_head(features), ours(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, 192)


def test_reset_classifier_and_get_classifier_replace_and_give_the_head():
    model = timm.create_model("roadmap_micro_separate_downsampling")
    assert model.get_classifier() is model.fc and model.fc.out_features == 1000
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(images()).shape == (2, 7)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(images()).shape == (2, 192)


def test_bad_timm_arguments_are_one_line_errors():
    with pytest.raises(RuntimeError, match=r"Unknown model \(roadmap_r50_gelo\)"):
        timm.create_model("roadmap_r50_gelo")
    cases = [(dict(global_pool="catavgmax"), "global_pool='catavgmax' is not supported: choose one of avg, max"),
             (dict(num_classes=-1), "num_classes=-1 is not valid"),
             (dict(drop_path_rate=1.5), "model.drop_path_rate=1.5 is not valid"),
             (dict(features_only=True, feature_cls="list"), "leave feature_cls='getter'"),
             (dict(bn_eps=1e-3), "roadmap models take no argument 'bn_eps'")]
    for kwargs, message in cases:
        with pytest.raises(roadmap.ConfigError, match=message.replace("(", r"\(")) as e:
            meta_model("roadmap_r50_gelu", **kwargs)
        assert "\n" not in str(e.value)
    for args, message in [(("gelo",), "unknown step 'gelo': choose one of resnet"),
                          (("gelu", "r51"), "unknown regime 'r51': choose one of micro, r200, r50")]:
        with pytest.raises(roadmap.ConfigError, match=message):
            roadmap.timm_name(*args)


def test_import_roadmap_leaves_timm_alone_and_registers_steps_added_to_conf_step_when_timm_is_imported(tmp_path):
    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(ROOT / "conf"), str(conf)], check=True)
    (conf / "step" / "expansion_3.yaml").write_text(
        "# @package _global_\ndefaults:\n  - separate_downsampling\nstep:\n  name: expansion_3\n"
        "  change: expansion 4 -> 3\nmodel:\n  expansion: 3\n")
    code = (
        "import sys, torch, roadmap, roadmap.config as c; assert 'timm' not in sys.modules\n"
        f"c.CONF_DIR = __import__('pathlib').Path({str(conf)!r})\n"
        "import timm\n"
        "with torch.device('meta'): m = timm.create_model('roadmap_r50_expansion_3')\n"
        "print(len(timm.list_models('roadmap_*')), m.cfg.expansion, timm.data.resolve_data_config({}, model=m)"
        "['interpolation'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(3 * (len(STEPS) + 1)), "3", "bicubic"]


# ----------------------------------------------------------------------------- detection backbones


@pytest.mark.parametrize("step", STEPS)
def test_features_only_gives_the_four_stage_outputs_of_every_r50_step(step):
    model = cheap_model(f"roadmap_r50_{step}", features_only=True, out_indices=(0, 1, 2, 3))
    with torch.no_grad():
        features = model(images(batch=1))
    info = model.feature_info
    assert [f.shape[1] for f in features] == info.channels() == composed("r50", step)[0].stage_channels
    assert [64 // f.shape[-1] for f in features] == [64 // f.shape[-2] for f in features] == info.reduction()
    assert info.reduction() == [4, 8, 16, 32]
    assert info.module_name() == ["stages.0", "stages.1", "stages.2", "stages.3"]


def test_features_only_keeps_the_stages_it_needs_and_feeds_torchvisions_fpn():
    backbone = timm.create_model("roadmap_micro_gelu", features_only=True, out_indices=(1, 2))
    assert len(backbone.model.stages) == 3 and backbone.feature_info.channels() == [48, 96]
    backbone = timm.create_model("roadmap_micro_gelu", features_only=True)
    fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=32)
    levels = fpn(OrderedDict((f"p{i}", f) for i, f in enumerate(backbone(images()))))
    assert [tuple(v.shape) for v in levels.values()] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]


# ----------------------------------------------------------------------------- published weights


def test_pretrained_loads_a_local_file_or_torch_hubs_cache_as_roadmap_weights_does(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # offline: the URL's file is in the cache already
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "resnet50-0676ba61.pth"
    torch.save(randomize(torchvision.models.resnet50()).state_dict(), path)
    expected = roadmap.import_weights(roadmap.build_model(roadmap.compose("resnet", "regime=r50", "data=imagenet")),
                                      path).eval()
    from_file = timm.create_model("roadmap_r50_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    from_cache = timm.create_model("roadmap_r50_resnet.tv_in1k", pretrained=True)
    x = images()
    with torch.no_grad():
        assert torch.equal(from_file.eval()(x), expected(x)) and torch.equal(from_cache.eval()(x), expected(x))
        grey = timm.create_model("roadmap_r50_resnet", pretrained=True, num_classes=10, in_chans=1).eval()
        assert grey.fc.out_features == 10
        # timm's adapt_input_conv sums the stem over colours: a grey image is its three copies
        assert torch.allclose(grey.forward_head(grey.forward_features(x[:, :1]), pre_logits=True),
                              expected.forward_features(x[:, :1].expand(-1, 3, -1, -1)), atol=1e-4)


def test_pretrained_on_an_intermediate_step_names_the_ends_that_have_weights():
    with pytest.raises(roadmap.ConfigError) as e:
        timm.create_model("roadmap_r50_gelu", pretrained=True)
    assert str(e.value).startswith("roadmap_r50_gelu has no published weights")
    assert "roadmap_r50_resnet, roadmap_r50_separate_downsampling" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- torch.hub


def test_torch_hub_lists_and_loads_every_step(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    os.symlink(ROOT, tmp_path / "roadmap_roadmap_main")  # the repository as torch.hub caches a GitHub checkout
    listed = torch.hub.list("roadmap/roadmap:main", trust_repo=True, verbose=False)
    assert sorted(listed) == sorted([*NAMES, "roadmap_step"])
    model = torch.hub.load(str(ROOT), "roadmap_r50_gelu", source="local")
    assert isinstance(model, TimmConvNet) and num_params(model) == complexity(composed("r50", "gelu")[0]).params
    small = torch.hub.load(str(ROOT), "roadmap_step", source="local", step="gelu", regime="micro", num_classes=3)
    assert (small.cfg.widths, small.num_classes) == (composed("micro", "gelu")[0].widths, 3)
    with pytest.raises(roadmap.ConfigError, match="unknown step 'gelo'"):
        torch.hub.load(str(ROOT), "roadmap_step", source="local", step="gelo")


# ----------------------------------------------------------------------------- training the timm way


def test_a_step_trains_through_timms_optimizer_factory_and_losses():
    model = timm.create_model("roadmap_micro_gelu", num_classes=10)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05)
    decayed, not_decayed = ({id(p) for p in g["params"]} for g in sorted(optimizer.param_groups,
                                                                         key=lambda g: -g["weight_decay"]))
    assert not_decayed == {id(p) for p in model.parameters() if p.ndim <= 1}  # norms, biases, layer scales
    assert decayed == {id(p) for p in model.parameters() if p.ndim > 1}
    loss_fn, x, y = timm.loss.LabelSmoothingCrossEntropy(0.1), images(batch=8), torch.arange(8)
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- export


@pytest.mark.slow  # 17 exports, about 30 s of one core; CI runs it (make test deselects nothing)
@pytest.mark.parametrize("step", STEPS)
def test_every_r50_step_exports_through_torch_export_with_the_eager_logits(step):
    with torch.device("meta"):
        model = ConvNet(composed("r50", step)[0])
    model, x = randomize(model.to_empty(device="cpu")), images(batch=1)  # random weights, without initialising
    program = export.exported_program(model, x)
    with torch.no_grad():
        diff, allowed = export.compare(model(x), program.module()(x), 1e-4)
    assert diff <= allowed


def run_export(capsys, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["roadmap.export", *argv])
    with pytest.raises(SystemExit) as e:
        export.run(export.main, export.__doc__)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("fmt,suffix", [("exported_program", "pt2"), ("torchscript", "ts")])
def test_the_export_command_writes_the_file_and_prints_its_distance_to_the_eager_logits(fmt, suffix, tmp_path,
                                                                                      capsys, monkeypatch):
    out = tmp_path / "sub" / f"gelu.{suffix}"
    code, stdout, _ = run_export(capsys, monkeypatch, "+step=gelu", "regime=micro", f"format={fmt}", f"out={out}",
                                 "resolution=64", "batch=3")
    assert code == 0 and out.is_file()
    lines = stdout.splitlines()
    assert lines[0] == f"wrote {out}: gelu (micro regime), {fmt}, input (3, 1, 64, 64)"
    assert "vs eager logits on a random (3, 1, 64, 64) input: max |diff|" in lines[1]
    assert "tolerance" in lines[1] and lines[1].endswith(": ok")
    if fmt == "exported_program":  # any batch size
        assert torch.export.load(str(out)).module()(images(chans=1, batch=5)).shape == (5, 10)


def test_bad_export_input_is_one_line(tmp_path, capsys, monkeypatch):
    missing = [p for p in ("onnx", "onnxscript") if __import__("importlib").util.find_spec(p) is None]
    cases = [
        (["+step=gelu", f"out={tmp_path / 'x'}", "format=tflite"], "format=tflite is not valid: choose one of"),
        (["+step=gelu"], "no out= given"),
        (["+step=gelo", f"out={tmp_path / 'x'}"], "unknown step 'gelo'"),
        (["+step=gelu", "regime=r51", f"out={tmp_path / 'x'}"], "unknown regime 'r51'"),
        ([f"out={tmp_path / 'x'}"], "no step given"),
        (["+step=gelu,wider", f"out={tmp_path / 'x'}"], "export writes one network"),
        (["+step=gelu", f"out={tmp_path}"], "is a folder"),
        (["+step=gelu", f"out={tmp_path / 'x'}", "resolution=8"], "resolution=8 is smaller than"),
        (["+step=gelu", f"out={tmp_path / 'x'}", "batch=0"], "batch=0 is not valid"),
        (["+step=gelu", f"out={tmp_path / 'x'}", f"weights={tmp_path / 'none.pth'}"], "no file"),
    ]
    if missing:
        cases.append((["+step=gelu", f"out={tmp_path / 'x.onnx'}", "format=onnx"],
                      "not installed: pip install 'roadmap[onnx]'"))
    for argv, message in cases:
        code, _, err = run_export(capsys, monkeypatch, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
