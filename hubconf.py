"""torch.hub entries: every step of the roadmap in every regime, by its timm name.

    torch.hub.list("<this checkout>", source="local")      # roadmap_micro_resnet, ..., roadmap_r50_gelu, ...
    model = torch.hub.load("<this checkout>", "roadmap_r50_gelu", source="local")
    model = torch.hub.load("<this checkout>", "roadmap_r50_separate_downsampling", source="local", pretrained=True)
    model = torch.hub.load("<this checkout>", "roadmap_step", source="local", step="gelu", regime="r200")

Each entry is `timm.create_model(name, **kwargs)` (roadmap/timm_models.py): the same
keyword arguments (num_classes, in_chans, features_only, pretrained, ...) and the same
model. `roadmap_step` takes the step and the regime as arguments, steps you added to
conf/step/ included.
"""

dependencies = ["torch", "torchvision", "hydra", "omegaconf", "yaml", "timm"]

import roadmap as _roadmap  # noqa: E402

_NAMES = _roadmap.register_timm()  # without timm: one line, pip install 'roadmap[timm]'

import timm as _timm  # noqa: E402


def _entry(name):
    def entry(pretrained=False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _timm.models.model_entrypoint(name).__doc__
    return entry


def roadmap_step(step="separate_downsampling", regime="r50", pretrained=False, **kwargs):
    """Any step of the roadmap in any regime: roadmap_step(step="gelu", regime="r50") is roadmap_r50_gelu. An unknown
    step or regime is a one-line roadmap.ConfigError listing the valid ones. Takes timm's keyword arguments."""
    _roadmap.register_timm()  # steps added to conf/step/ since
    return _timm.create_model(_roadmap.timm_name(step, regime), pretrained=pretrained, **kwargs)


globals().update({_name: _entry(_name) for _name in _NAMES})
