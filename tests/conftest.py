import json

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


def set_top1(study, top1_of):
    """Give every run of a study the top-1 top1_of(step, seed): one smoke epoch learns little
    (a run at chance is never averaged), and tests that read tables need numbers to average."""
    for summary in study.glob("**/seed*/summary.json"):
        record, step, seed = json.loads(summary.read_text()), summary.parent.parent.name, int(summary.parent.name[4:])
        summary.write_text(json.dumps({**record, "top1": top1_of(step, seed)}))


def image_folder(root, size, colour):
    """train/ and val/ with classes a and b, one RGB image of `size` (w, h) and `colour` each."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            Image.new("RGB", size, colour).save(root / split / label / "0.png")
    return root
