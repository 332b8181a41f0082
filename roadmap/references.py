"""The reference implementations of the roadmap's two ends, built to a step's config:
torchvision's and timm's ResNet and ConvNeXt with the same depths, widths, stem and
drop-path rate, so that the benchmark times the same network their way beside ours.
`same_network` checks that they are: our importer loads their weights strictly."""

from __future__ import annotations

import importlib.util
from typing import Callable, Dict, List, Tuple

from torch import nn

from roadmap.model import ModelConfig
from roadmap.weights import WeightImportError, import_weights


def torchvision_resnet(cfg: ModelConfig) -> nn.Module:
    """torchvision's ResNet class with the config's depths and widths (resnet50 for r50;
    torchvision has no resnet200 builder but its class builds one)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    m = ResNet(Bottleneck, cfg.depths, num_classes=cfg.num_classes)
    if cfg.widths != [64, 128, 256, 512] or cfg.in_chans != 3:  # its constructor fixes these: rebuild them its way
        m.inplanes = cfg.widths[0]
        m.conv1 = nn.Conv2d(cfg.in_chans, cfg.widths[0], 7, 2, 3, bias=False)
        m.bn1 = nn.BatchNorm2d(cfg.widths[0])
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
            setattr(m, f"layer{i + 1}", m._make_layer(Bottleneck, width, depth, stride=1 if i == 0 else 2))
        m.fc = nn.Linear(cfg.widths[-1] * 4, cfg.num_classes)
    return m


def timm_resnet(cfg: ModelConfig) -> nn.Module:
    """timm's ResNet class with the config's depths, widths and input channels."""
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, cfg.depths, channels=cfg.widths, in_chans=cfg.in_chans, num_classes=cfg.num_classes)


def torchvision_convnext(cfg: ModelConfig) -> nn.Module:
    """torchvision's ConvNeXt class with the config's stages, drop-path rate, layer scale and stem."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    widths = cfg.widths + [None]
    setting = [CNBlockConfig(widths[i], widths[i + 1], d) for i, d in enumerate(cfg.depths)]
    m = ConvNeXt(
        setting, stochastic_depth_prob=cfg.drop_path_rate, layer_scale=cfg.layer_scale, num_classes=cfg.num_classes
    )
    if cfg.in_chans != 3 or cfg.patch_size != 4:  # its stem conv is fixed at 3 channels, 4x4
        m.features[0][0] = nn.Conv2d(cfg.in_chans, cfg.widths[0], cfg.patch_size, cfg.patch_size)
    return m


def timm_convnext(cfg: ModelConfig) -> nn.Module:
    """timm's ConvNeXt class with the config's stages, drop-path rate, layer scale and stem."""
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(in_chans=cfg.in_chans, num_classes=cfg.num_classes, depths=cfg.depths, dims=cfg.widths,
                    drop_path_rate=cfg.drop_path_rate, ls_init_value=cfg.layer_scale, patch_size=cfg.patch_size)


HAS_TIMM = importlib.util.find_spec("timm") is not None  # a test extra: without it, torchvision's references only

# Each end's references: (implementation, builder, whether it can build this config).
REFERENCES: Dict[str, List[Tuple[str, Callable[[ModelConfig], nn.Module], Callable[[ModelConfig], bool]]]] = {
    "resnet": [
        ("torchvision", torchvision_resnet, lambda c: True),
        ("timm", timm_resnet, lambda c: HAS_TIMM and c.widths[0] == 64),
    ],  # timm's stem is 64 channels whatever the widths
    "separate_downsampling": [
        ("torchvision", torchvision_convnext, lambda c: True),
        ("timm", timm_convnext, lambda c: HAS_TIMM),
    ],
}


def same_network(ours: nn.Module, ref: nn.Module) -> bool:
    """Whether our importer loads the reference's weights into ours strictly (every tensor, every shape)."""
    try:
        import_weights(ours, ref.state_dict())
    except WeightImportError:
        return False
    return True
