"""Exact at both ends: ResNet-50/200 and ConvNeXt-T/B, parameter for parameter, logit for logit."""

import re

import pytest
import timm
import torch
import torchvision
from timm.models.convnext import checkpoint_filter_fn
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import roadmap
from roadmap.model import num_params
from roadmap.weights import WeightImportError
from tests.conftest import build


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial weights and BN statistics, so that every tensor matters in the logits
    (layer scales at 1e-6 would hide a wrong block)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith(("running_var", "gamma", "layer_scale")):
                    t.uniform_(0.5, 1.5)
                elif name.endswith("running_mean"):
                    t.normal_(0, 0.1)
                elif t.dim() > 1:
                    fan_in = t[0].numel()
                    t.normal_(0, (1.0 / fan_in) ** 0.5)
                else:
                    t.normal_(0, 0.1) if name.endswith("bias") else t.uniform_(0.5, 1.5)
    return model.eval()


def assert_same_logits(ours, reference, resolution):
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        diff = (ours.eval()(x) - reference.eval()(x)).abs().max().item()
    assert diff <= 1e-4


# Each end against a reference: (step, regime, the reference, its parameters, the resolution compared at).
ENDS = [
    pytest.param("resnet", "r50", lambda: torchvision.models.resnet50(), 25_557_032, 224, id="resnet50-torchvision"),
    pytest.param("resnet", "r200", lambda: ResNet(Bottleneck, [3, 24, 36, 3]), 64_673_832, 128, id="resnet200"),
    pytest.param("separate_downsampling", "r50", lambda: timm.create_model("convnext_tiny"), 28_589_128, 224,
                 id="convnext_t-timm"),
    pytest.param("separate_downsampling", "r50", lambda: torchvision.models.convnext_tiny(), 28_589_128, 224,
                 id="convnext_t-torchvision"),
    pytest.param("separate_downsampling", "r200", lambda: timm.create_model("convnext_base"), 88_591_464, 64,
                 id="convnext_b-timm"),
]


@pytest.mark.parametrize("step, regime, reference, params, resolution", ENDS)
def test_each_end_is_the_reference_network_parameter_for_parameter_and_logit_for_logit(
    step, regime, reference, params, resolution
):
    ours = build(step, f"regime={regime}")
    ref = randomize(reference())
    assert num_params(ours) == num_params(ref) == params
    roadmap.import_weights(ours, ref.state_dict())
    assert_same_logits(ours, ref, resolution)


def official_layout(timm_sd):
    """timm -> the official ConvNeXt checkpoint's key names (checked below against
    timm's own official -> timm converter)."""
    out = {}
    for k, v in timm_sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k = k.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[k] = v
    return {"model": out}  # the official files wrap the state dict


def test_convnext_t_takes_the_official_checkpoint_layout():
    ref = randomize(timm.create_model("convnext_tiny"))
    official = official_layout(ref.state_dict())
    converted = checkpoint_filter_fn(official, ref)  # timm's own reading of the official layout
    assert converted.keys() == ref.state_dict().keys()
    ours = roadmap.import_weights(build("separate_downsampling", "regime=r50"), official)
    assert_same_logits(ours, ref, 224)


def test_import_is_strict_about_missing_tensors():
    sd = torchvision.models.resnet50().state_dict()
    del sd["layer2.0.bn2.running_var"]
    with pytest.raises(WeightImportError, match=r"not in the state dict: stages\.1\.blocks\.0\.norm2\.running_var"):
        roadmap.import_weights(build("resnet", "regime=r50"), sd)


def test_import_is_strict_about_left_over_tensors():
    # ResNet-50's weights do not fit the stage_ratio network (3,3,9,3): layer2.3 is left over
    sd = torchvision.models.resnet50().state_dict()
    with pytest.raises(WeightImportError, match=r"fit nothing in the model: stages\.1\.blocks\.3\.conv1\.weight"):
        roadmap.import_weights(build("stage_ratio", "regime=r50"), sd)


def test_import_is_strict_about_shapes():
    sd = torchvision.models.resnet50(num_classes=10).state_dict()
    with pytest.raises(
        WeightImportError, match=r"fc\.weight has shape \(10, 2048\) in the state dict but \(1000, 2048\)"
    ):
        roadmap.import_weights(build("resnet", "regime=r50"), sd)


def test_import_round_trips_our_own_checkpoints_with_ddp_prefixes():
    a, b = build("kernel_7", "regime=r50"), build("kernel_7", "regime=r50")
    roadmap.import_weights(b, {"module." + k: v for k, v in a.state_dict().items()})
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
