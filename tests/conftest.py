import pytest
import torch

import roadmap


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(step, *overrides, imagenet=True):
    """The model of a step; ImageNet shapes by default (the paper's)."""
    extra = ("data=imagenet",) if imagenet else ()
    return roadmap.build_model(roadmap.compose(step, *extra, *overrides))


def model_cfg(step, *overrides):
    return roadmap.compose(step, *overrides).model
