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


def one_line_error(out, *fragments):
    """A command refused bad input: exit code 2, one line on stderr naming it."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for f in fragments:
        assert f in lines[0]
