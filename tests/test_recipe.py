"""The paper's two recipes, and the micro study's budget."""

import pytest
import torch

import roadmap
from roadmap.config import validate
from roadmap.model import ConvNet, ModelConfig
from roadmap.recipe import build_optimizer, build_scheduler
from tests.conftest import image_folder


def recipe(step, *overrides):
    return validate(roadmap.compose(step, *overrides)).recipe


def lrs(rec, steps_per_epoch=10):
    model = ConvNet(ModelConfig(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8], in_chans=1, num_classes=10))
    opt = build_optimizer(model, rec)
    sched = build_scheduler(opt, rec, steps_per_epoch)
    out = []
    for _ in range(rec.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, out


def test_the_resnet_step_trains_with_the_original_recipe():
    r = recipe("resnet", "+experiment=imagenet_r50")
    assert (r.name, r.optimizer, r.lr, r.lr_batch, r.momentum, r.weight_decay) == (
        "classic",
        "sgd",
        0.1,
        256,
        0.9,
        1e-4,
    )
    assert (r.epochs, r.batch_size, r.interpolation, r.randaugment) == (
        90,
        256,
        "bilinear",
        None,
    )  # torchvision trains bilinear
    opt, seq = lrs(r, 2)
    assert isinstance(opt, torch.optim.SGD) and all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    assert seq[0] == pytest.approx(0.1) and seq[30 * 2] == pytest.approx(0.01) and seq[60 * 2] == pytest.approx(0.001)
    assert seq[30 * 2 - 1] == pytest.approx(0.1)  # decays at epochs 30 and 60 of 90


def test_every_later_step_trains_with_the_convnext_recipe_of_table_5():
    for step in roadmap.STEPS[1:]:
        assert recipe(step).name == "convnext"
    r = recipe("separate_downsampling", "+experiment=imagenet_r50")
    assert (r.optimizer, r.lr, r.lr_batch, r.lr_scaling, r.weight_decay, r.betas) == (
        "adamw",
        4e-3,
        4096,
        "linear",
        0.05,
        [0.9, 0.999],
    )
    assert (r.epochs, r.batch_size, r.warmup, r.min_lr) == (300, 4096, pytest.approx(20 / 300), 1e-6)
    assert (r.randaugment, r.interpolation) == ("rand-m9-mstd0.5-inc1", "bicubic")
    assert (r.mixup, r.cutmix, r.random_erasing, r.label_smoothing, r.regularization) == (0.8, 1.0, 0.25, 0.1, 1.0)
    assert r.ema is False and r.ema_decay == 0.9999 and r.crop_scale == [0.08, 1.0]
    model = validate(roadmap.compose("separate_downsampling", "+experiment=imagenet_r50")).model
    assert (model.drop_path_rate, model.layer_scale) == (0.1, 1e-6)
    assert validate(roadmap.compose("separate_downsampling", "+experiment=imagenet_r200")).model.drop_path_rate == 0.5


def test_adamw_decays_conv_and_linear_weights_only_with_warmup_then_cosine():
    r = recipe("gelu", "+experiment=imagenet_r50", "recipe.epochs=30")
    opt, seq = lrs(r, 10)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    peak = 4e-3
    warm = 20  # 20/300 of 300 steps
    assert seq[0] < peak / 100 and seq[warm] == pytest.approx(peak, rel=1e-3)
    assert seq[warm + (300 - warm) // 2] == pytest.approx(peak / 2, rel=0.02) and seq[-1] < peak / 100


def test_a_short_run_keeps_the_recipes_shape():
    r = recipe("gelu", "+experiment=imagenet_r50", "recipe.epochs=3")
    _, seq = lrs(r, 100)
    assert max(range(len(seq)), key=seq.__getitem__) == 20  # warmup is still 20/300 of training


def test_the_micro_study_budget_is_the_same_for_every_step():
    budget = ("epochs", "batch_size", "regularization", "crop_scale", "lr_scaling", "hflip")
    values = {repr([getattr(recipe(s), k) for k in budget]) for s in roadmap.STEPS}
    assert len(values) == 1


def test_square_root_lr_scaling_for_small_batches():
    r = recipe("gelu", "recipe.lr_scaling=sqrt", "recipe.batch_size=256")
    assert r.scaled_lr() == pytest.approx(4e-3 / 4)  # sqrt(256/4096) = 1/4
    assert recipe("gelu", "recipe.batch_size=256", "recipe.lr_scaling=linear").scaled_lr() == pytest.approx(2.5e-4)


def test_imagenet_presets_reach_batch_4096_by_accumulating_gradients():
    cfg = validate(roadmap.compose("gelu", "+experiment=imagenet_r50"))
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.num_classes, cfg.data.source) == (
        224,
        3,
        1000,
        "imagefolder",
    )
    assert cfg.recipe.batch_size // cfg.recipe.device_batch == 32  # on one GPU; 4 on eight
    assert validate(roadmap.compose("gelu", "+experiment=imagenet_r200")).regime.name == "r200"


def test_ema_of_a_batchnorm_step_averages_its_running_statistics_too(tmp_path):
    from roadmap.train import run_one

    assert run_one(roadmap.compose("resnet", "+experiment=smoke", "recipe.ema=true", "recipe.epochs=1"), tmp_path) == 0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    ema, model = state["ema"], state["model"]
    stem_mean, stem_var = ema["module.stem.norm.running_mean"], ema["module.stem.norm.running_var"]
    assert not torch.equal(stem_mean, torch.zeros_like(stem_mean)) and not torch.equal(
        stem_var, torch.ones_like(stem_var)
    )
    assert not torch.equal(stem_mean, model["stem.norm.running_mean"])  # an average, not the last value


def test_ema_evaluates_as_a_hand_averaged_copy_of_weights_and_buffers():
    import copy

    from roadmap.engine import build_ema

    torch.manual_seed(0)
    model = roadmap.build_model(roadmap.compose("resnet"))
    ema, hand = build_ema(model, 0.9), copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(6):
        model(torch.randn(16, 1, 32, 32)).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(model)
        for mine, current in zip(hand.state_dict().values(), model.state_dict().values()):
            if step == 0:  # the first update copies, as timm's ModelEma starts from the model
                mine.copy_(current)
            else:
                mine.copy_(mine * 0.9 + current * 0.1)
    x = torch.randn(8, 1, 32, 32)
    ema.module.eval(), hand.eval()
    assert torch.allclose(ema.module(x), hand(x), atol=1e-5)
    bn = dict(ema.module.named_buffers())["stem.norm.running_mean"]
    assert torch.allclose(bn, dict(hand.named_buffers())["stem.norm.running_mean"]) and bn.abs().sum() > 0


def test_each_recipe_resamples_with_its_own_interpolation_in_memory_and_in_image_folders(tmp_path):
    from torchvision.transforms import v2

    from roadmap.data import Data, folder_datasets
    from roadmap.machine import Machine

    here = Machine(0, 1, 0, torch.device("cpu"))
    for step, interpolation in (("resnet", "bilinear"), ("gelu", "bicubic")):
        run = validate(roadmap.compose(step))
        assert Data(run.data, run.recipe, run.seed, here, 64).augment.interpolation == interpolation
    image_folder(tmp_path, (40, 30), (10, 20, 30))
    data = validate(roadmap.compose("resnet", "data=imagefolder", f"data.root={tmp_path}", "data.num_classes=2",
                                    "data.image_size=32")).data
    train, val = folder_datasets(data, (0.08, 1.0), hflip=0.0, interpolation="bilinear")
    crop, flip = train.transform.transforms[1], train.transform.transforms[2]
    assert crop.interpolation == v2.InterpolationMode.BILINEAR and flip.p == 0.0  # image folders honour recipe.hflip
    assert val.transform.transforms[1].interpolation == v2.InterpolationMode.BILINEAR


@pytest.mark.parametrize("step", ["resnet", "separate_downsampling"])  # SGD and AdamW
def test_the_optimizer_updates_all_tensors_at_once_with_the_numbers_of_the_per_tensor_loop(step):
    rec = recipe(step)
    weights = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = ConvNet(ModelConfig(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8], in_chans=1, num_classes=10))
        opt = build_optimizer(model, rec)
        assert all(g["foreach"] for g in opt.param_groups)
        for g in opt.param_groups:
            g["foreach"] = foreach
        for _ in range(3):
            torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.arange(8)).backward()
            opt.step()
            opt.zero_grad()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
