"""Batched augmentation that draws per image, as the paper's per-image pipeline does."""

import torch
from torchvision.transforms import v2

from roadmap.augment import BatchAugment, random_erasing, sample_boxes
from roadmap.randaugment import Policy, RandAugment

SAME = (
    torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).div(4).byte().repeat(8, 1, 1, 1)
)  # 8 identical images


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def distinct(x):
    return len({tuple(img.flatten().tolist()) for img in x})


def test_a_v2_transform_on_a_batch_tensor_draws_once_for_the_whole_batch():
    # the reason for roadmap.augment: torchvision applies one crop to all images of a batch
    out = v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True)(SAME)
    assert distinct(out) == 1


def test_two_images_of_one_batch_get_different_crops():
    aug = BatchAugment(crop=True, crop_scale=(0.08, 1.0), hflip=0.5)
    assert distinct(aug.per_image(SAME.clone(), g())) == 8


def test_two_images_of_one_batch_get_different_randaugment_operations():
    ra = RandAugment(Policy.parse("rand-m9-mstd0.5-inc1"), fill=(128,))
    out = ra(SAME.float(), g())
    assert distinct(out) >= 5  # 2 of 15 ops each, applied with p=0.5, random signs and magnitudes


def test_random_resized_crop_boxes_follow_torchvisions_sampling():
    boxes = sample_boxes(4000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), g())
    top, left, h, w = boxes.unbind(1)
    area = h * w / 1024
    assert area.min() >= 0.06 and area.max() <= 1.0  # rounding of h and w
    assert ((top + h) <= 32).all() and ((left + w) <= 32).all() and (top >= 0).all()
    assert len({tuple(b.tolist()) for b in boxes}) > 1000


def test_random_erasing_erases_about_p_of_the_images_each_in_its_own_box():
    x = torch.zeros(2000, 1, 32, 32)
    out = random_erasing(x.clone(), 0.25, g())
    erased = (out != 0).flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.25) < 0.03
    areas = (out != 0).flatten(1).sum(1)[erased].float() / 1024
    assert areas.max() <= 1 / 3 + 0.02 and len(set(areas.tolist())) > 20


def test_the_same_generator_gives_the_same_augmentation():
    aug = BatchAugment(crop=True, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    assert torch.equal(aug.per_image(SAME.clone(), g(3)), aug.per_image(SAME.clone(), g(3)))


def test_with_everything_off_images_are_only_normalized():
    aug = BatchAugment(crop=True, crop_scale=(1.0, 1.0), hflip=0.0, mean=(0.5,), std=(0.25,))
    assert torch.allclose(aug.per_image(SAME.clone(), g()), (SAME.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_mixup_and_cutmix_mix_a_batch_into_soft_targets():
    aug = BatchAugment(crop=False, mixup=0.8, cutmix=1.0, num_classes=10)
    torch.manual_seed(0)
    x, y = aug(SAME.clone(), torch.arange(8), g())
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8))
    assert (y.max(1).values < 1).any()  # mixed


def test_the_broadcast_affine_grid_samples_exactly_as_torchs_affine_grid():
    import torch.nn.functional as F

    from roadmap.augment import warp

    x = torch.rand(16, 3, 20, 24, generator=g())
    theta = torch.randn(16, 2, 3, generator=g()) * 0.3 + torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    for mode in ("bilinear", "bicubic"):
        ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode=mode, align_corners=False)
        assert torch.allclose(warp(x, theta, mode), ref, atol=1e-5)


def test_a_batch_gets_what_each_image_would_get_alone_from_the_same_draws():
    """The batch is sorted by op and the geometric ops that move the same axes share one
    resampling: image by image, the result is still the drawn ops applied one at a time."""
    ra = RandAugment(Policy.parse("rand-m9-mstd0.5-inc1"), fill=(128,))
    x = torch.randint(0, 256, (64, 1, 32, 32)).float()
    batched = ra(x.clone(), g(5))
    draws, one_by_one = g(5), x.clone()
    for _ in range(2):
        op, level, sign = ra.draw(len(x), draws)
        for i, k in enumerate(op.tolist()):
            if k >= 0:
                one_by_one[i : i + 1] = ra.apply(one_by_one[i : i + 1], ra.ops[k], level[i : i + 1], sign[i : i + 1])
    assert torch.equal(batched, one_by_one)
    assert len({ra.ops[k] for k in op.tolist() if k >= 0} & {"ShearX", "TranslateXRel", "Rotate"}) == 3
