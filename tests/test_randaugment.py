"""The paper's RandAugment is timm's rand-m9-mstd0.5-inc1: every op equals timm's PIL op on
real images, the policy draws ops, application and magnitudes as timm does, and the
magnitude tables are timm's."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import auto_augment as timm_aa

import roadmap
from roadmap.augment import BatchAugment
from roadmap.errors import ConfigError
from roadmap.randaugment import GEOMETRIC, INCREASING_OPS, LEVEL_TO_ARG, Policy, RandAugment, fill_colour

MAGNITUDES = (0, 2.5, 5.5, 9, 9.7, 10)


@pytest.fixture(scope="module")
def images():
    """64 real Fashion-MNIST images (grey) and 64 RGB images made of three of them each."""
    from roadmap.data import load_fashion_mnist

    train, _ = load_fashion_mnist(None, 32, download=False)  # `make test` installs it first (make data)
    x = train.images[:256, 0]
    grey = x[:64, None]
    rgb = torch.stack([x[64:128], x[128:192].flip(-1), x[192:256].flip(-2)], 1)
    return {"L": grey, "RGB": rgb}


def timm_op(name, image, magnitude, negate, fill, resample=Image.BICUBIC):
    """timm's op at a fixed magnitude and direction (its random sign forced)."""
    op = timm_aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams={"img_mean": fill, "interpolation": resample})
    saved = random.random
    random.random = (lambda: 1.0) if negate else (lambda: 0.0)  # timm negates when random() > 0.5
    try:
        return op(image)
    finally:
        random.random = saved


def as_pil(img):
    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def from_pil(pil):
    arr = torch.from_numpy(np.array(pil)).float()
    return arr[None] if arr.dim() == 2 else arr.permute(2, 0, 1)


def max_difference(batch, name, magnitude, negate, interpolation="bicubic", resample=Image.BICUBIC):
    fill = fill_colour([0.2860] if batch.shape[1] == 1 else [0.485, 0.456, 0.406])
    ra = RandAugment(Policy(increasing=True), fill, interpolation)
    n = len(batch)
    ours = ra.apply(batch.float().clone(), name, torch.full((n,), magnitude / 10, dtype=torch.float64),
                    torch.full((n,), -1.0 if negate else 1.0, dtype=torch.float64))
    theirs = torch.stack([from_pil(timm_op(name, as_pil(img), magnitude, negate, fill, resample)) for img in batch])
    return (ours - theirs).abs().max().item()


# Ops where timm's own call fails: Pillow >= 10 refuses to keep 0 bits, which
# PosterizeIncreasing asks for at magnitude 10 (and Posterize below 2.5); ours gives black, as PIL did before.
SKIP = {("PosterizeIncreasing", 10), ("Posterize", 0)}


@pytest.mark.parametrize(
    "name", INCREASING_OPS + ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
)
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_each_op_equals_timms_pil_op_on_real_images(images, name, mode):
    for magnitude in MAGNITUDES:
        if (name, magnitude) in SKIP:
            continue
        for negate in (False, True):
            assert max_difference(images[mode], name, magnitude, negate) == 0, (name, mode, magnitude, negate)


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("interpolation,resample", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_geometric_ops_equal_pils_resampling_on_non_square_images(images, name, interpolation, resample):
    wide = torch.nn.functional.interpolate(images["RGB"][:16].float(), size=(24, 40), mode="bilinear").round().byte()
    for magnitude in (1.3, 7, 10):
        for negate in (False, True):
            assert max_difference(wide, name, magnitude, negate, interpolation, resample) == 0


def test_black_after_keeping_no_bits(images):
    ra = RandAugment(Policy(increasing=True), (73,))
    out = ra.apply(
        images["L"].float(),
        "PosterizeIncreasing",
        torch.ones(64, dtype=torch.float64),
        torch.ones(64, dtype=torch.float64),
    )
    assert out.max() == 0


# ----------------------------------------------------------------------------- the policy's draws


def test_the_magnitude_tables_are_timms():
    grid = [i / 100 for i in range(0, 1001)]  # magnitudes 0..10
    for name, to_arg in LEVEL_TO_ARG.items():
        for sign in (1.0, -1.0):
            ours = to_arg(
                torch.tensor(grid, dtype=torch.float64) / 10, torch.full((len(grid),), sign, dtype=torch.float64)
            )
            saved = random.random
            random.random = (lambda: 1.0) if sign < 0 else (lambda: 0.0)
            try:
                theirs = [timm_aa.LEVEL_TO_ARG[name](m, {"translate_pct": 0.45})[0] for m in grid]
            finally:
                random.random = saved
            assert ours.tolist() == theirs, name


def timm_draws(policy: str, n: int):
    """(op name or None when skipped, magnitude) of each slot timm's RandAugment draws, n images."""
    seen = []
    ra = timm_aa.rand_augment_transform(policy, {"img_mean": (128,)})
    for op in ra.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **kw: seen.append((_name, args)) or img
    img = Image.new("L", (4, 4))
    for _ in range(n):
        before = len(seen)
        ra(img)
        seen.extend([(None, ())] * (2 - (len(seen) - before)))
    return seen


def test_op_frequencies_and_application_match_timms_over_a_large_batch():
    n = 20000
    ours = RandAugment(Policy.parse("rand-m9-mstd0.5-inc1"), (128,))
    op, level, _ = ours.draw(2 * n, torch.Generator().manual_seed(0))
    our_counts = [int((op == -1).sum())] + [int((op == k).sum()) for k in range(15)]
    theirs = timm_draws("rand-m9-mstd0.5-inc1", n)
    names = [name for name, _ in theirs]
    their_counts = [names.count(None)] + [names.count(name) for name in INCREASING_OPS]
    assert abs(our_counts[0] / (2 * n) - 0.5) < 0.01 and abs(their_counts[0] / (2 * n) - 0.5) < 0.01  # p = 0.5
    _, p_value, _, _ = stats.chi2_contingency([our_counts, their_counts])
    assert p_value > 0.001  # the same distribution over "skipped" and the 15 ops
    assert set(INCREASING_OPS) == set(n for n in names if n)


def test_magnitudes_are_drawn_from_n_9_0_5_clipped_to_10():
    ours = RandAugment(Policy.parse("rand-m9-mstd0.5-inc1"), (128,))
    _, level, _ = ours.draw(100000, torch.Generator().manual_seed(1))
    m = level * 10
    assert m.max().item() == 10.0 and m.min().item() >= 0
    assert abs((m == 10).double().mean().item() - stats.norm.sf(2)) < 0.003  # the part above 10 clipped to it
    below = m[m < 10].numpy()
    clipped_normal = lambda x: np.where(x < 10, stats.norm.cdf(x, 9, 0.5), 1.0)  # noqa: E731
    assert stats.kstest(below, lambda x: clipped_normal(x) / stats.norm.cdf(10, 9, 0.5)).pvalue > 0.001


def test_about_one_op_per_image_is_applied():
    """2 slots x p 0.5: one op per image on average (torchvision's policy applied 1.86)."""
    ours = RandAugment(Policy.parse("rand-m9-mstd0.5-inc1"), (128,))
    g = torch.Generator().manual_seed(2)
    applied = sum((ours.draw(10000, g)[0] >= 0).double() for _ in range(2))
    assert abs(applied.mean().item() - 1.0) < 0.03


# ----------------------------------------------------------------------------- the policy string


@pytest.mark.parametrize(
    "text", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n3-mstd1-inc1", "rand-m10-mstd101-mmax10-inc1-p0.7"]
)
def test_the_policy_string_round_trips(text):
    assert Policy.parse(text).name == text


def test_the_policy_reads_like_timms():
    p = Policy.parse("rand-m9-mstd0.5-inc1")
    assert (p.magnitude, p.num_ops, p.magnitude_std, p.increasing, p.prob) == (9, 2, 0.5, True, 0.5)
    assert p.ops == tuple(timm_aa._RAND_INCREASING_TRANSFORMS) and Policy.parse("rand-m9").ops == tuple(
        timm_aa._RAND_TRANSFORMS
    )
    assert math.isinf(Policy.parse("rand-m9-mstd101").magnitude_std)


def test_a_policy_timm_would_not_read_is_refused_at_compose_time():
    with pytest.raises(ConfigError, match="recipe.randaugment=rand-m9-x1 has 'x1'"):
        roadmap.compose("gelu", "recipe.randaugment=rand-m9-x1")
    with pytest.raises(ConfigError, match="is not a RandAugment policy"):
        roadmap.compose("gelu", "recipe.randaugment=augmix-m5")


def test_the_batch_pipeline_runs_the_policy_on_uint8_values_and_scales_it_with_regularization():
    aug = BatchAugment(crop=False, randaugment="rand-m9-mstd0.5-inc1", randaugment_scale=0.5, mean=(0.5,), std=(0.5,))
    assert aug.randaugment.policy.magnitude == 4.5
    assert BatchAugment(crop=False, randaugment="rand-m9-mstd0.5-inc1", randaugment_scale=0.0).randaugment is None
    x = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    out = aug.per_image(x, torch.Generator().manual_seed(0))
    values = (out * 0.5 + 0.5) * 255
    assert torch.allclose(values, values.round(), atol=1e-3)  # every op gave uint8 values, as PIL does
