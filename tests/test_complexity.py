"""FLOPs the paper's way: conv and linear multiply-accumulates at 224x224, 1000 classes."""

import dataclasses

import pytest
import torchvision

import roadmap
from roadmap import paper
from roadmap.complexity import complexity
from roadmap.config import model_config


def imagenet_gmacs(step, regime):
    return complexity(roadmap.compose(step, f"regime={regime}", "data=imagenet"), 224).gmacs


@pytest.mark.parametrize("regime", ["r50", "r200"])
@pytest.mark.parametrize("step", roadmap.STEPS)
def test_every_step_matches_tables_10_and_11_within_001_gflops(step, regime):
    ref = paper.row(regime, step)
    ours = imagenet_gmacs(step, regime)
    if (regime, step) in paper.EXPLAINED:
        assert abs(ours - ref.gflops) > paper.GFLOPS_TOLERANCE
    else:
        assert ours == pytest.approx(ref.gflops, abs=paper.GFLOPS_TOLERANCE)


def test_the_two_explained_rows_are_layer_norm_and_convnext_t_in_r50():
    assert set(paper.EXPLAINED) == {("r50", "layer_norm"), ("r50", "separate_downsampling")}
    # BN -> LN changes no conv: the same count as the step before
    assert imagenet_gmacs("layer_norm", "r50") == imagenet_gmacs("fewer_norms", "r50") == pytest.approx(4.15, abs=0.005)
    assert imagenet_gmacs("separate_downsampling", "r50") == pytest.approx(4.46, abs=0.005)


def test_counting_on_the_meta_device_equals_counting_the_real_model():
    cfg = roadmap.compose("separate_downsampling", "regime=r50", "data=imagenet")
    meta = complexity(cfg, 224)
    real = complexity(roadmap.build_model(cfg), 224)
    assert (meta.params, meta.macs) == (real.params, real.macs) == (28_589_128, real.macs)


def test_torchvisions_resnet50_counts_the_same_4_09_gmacs():
    tv = complexity(torchvision.models.resnet50(), 224)
    ours = complexity(roadmap.compose("resnet", "regime=r50", "data=imagenet"), 224)
    assert tv.macs == ours.macs and tv.gmacs == pytest.approx(4.09, abs=0.005)


def test_complexity_follows_the_configured_data_and_any_resolution():
    cfg = roadmap.compose("resnet", "regime=r50")  # Fashion-MNIST: 1 channel, 10 classes, 32x32
    small = complexity(cfg)
    assert small.resolution == 32
    imagenet = dataclasses.replace(model_config(cfg), in_chans=3, num_classes=1000)
    assert small.params < complexity(imagenet, 224).params
    assert complexity(cfg, 64).macs > small.macs
