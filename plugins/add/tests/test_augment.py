"""DiffAugment and the random crop: seeded, shape-preserving, differentiable."""

import pytest
import torch

from distillkit_add.augment import (diff_augment, parse_policy, rand_brightness, rand_cutout, rand_translation,
                                    random_crop)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_diff_augment_is_deterministic_given_a_generator_and_preserves_shape():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    a = diff_augment(x, "color,translation,cutout", _gen(7))
    b = diff_augment(x, "color,translation,cutout", _gen(7))
    c = diff_augment(x, "color,translation,cutout", _gen(8))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_diff_augment_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    diff_augment(torch.zeros(2, 3, 8, 8), "color,translation,cutout", _gen(1))
    assert torch.equal(torch.rand(1), expected)


def test_diff_augment_passes_gradients_to_its_input():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    diff_augment(x, "color,translation,cutout", _gen(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_policy_is_identity():
    x = torch.rand(2, 3, 8, 8)
    assert diff_augment(x, None) is x
    assert diff_augment(x, "") is x


def test_unknown_policy_part_is_rejected():
    with pytest.raises(ValueError, match="colour"):
        parse_policy("colour,translation")


def test_brightness_adds_one_offset_per_image_within_half():
    x = torch.zeros(4, 3, 5, 5)
    y = rand_brightness(x, _gen(3))
    per_image = y.flatten(1)
    assert torch.all(per_image == per_image[:, :1])  # one constant per image
    assert torch.all(per_image.abs() <= 0.5)


def test_translation_shifts_content_and_fills_with_zeros():
    # A 16×16 image of ones: a shift of up to 2 pixels (0.125·16) per axis leaves zero bands of that
    # width — at most 2·16 + 2·16 − 2·2 = 60 zeros.
    x = torch.ones(8, 1, 16, 16)
    y = rand_translation(x, _gen(5))
    zeros_per_image = (y == 0).flatten(1).sum(1)
    assert torch.all(zeros_per_image <= 60)
    assert zeros_per_image.sum() > 0  # at least one of 8 images moved
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_cutout_zeroes_one_square_of_a_fifth_of_the_side():
    # 20×20 → a 4×4 square (fewer pixels when clipped at the border).
    x = torch.ones(6, 3, 20, 20)
    y = rand_cutout(x, _gen(2))
    zeros = (y[:, 0] == 0).flatten(1).sum(1)
    assert torch.all((zeros >= 4) & (zeros <= 16))
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)  # the same mask on every channel


def test_random_crop_only_when_larger_and_with_probability_p():
    small = torch.rand(2, 3, 32, 32)
    assert random_crop(small, 32, p=1.0, generator=_gen(0)) is small
    big = torch.rand(2, 3, 48, 40)
    cropped = random_crop(big, 32, p=1.0, generator=_gen(0))
    assert cropped.shape == (2, 3, 32, 32)
    assert random_crop(big, 32, p=0.0, generator=_gen(0)) is big
    # the crop is a window of the input
    again = random_crop(big, 32, p=1.0, generator=_gen(0))
    assert torch.equal(cropped, again)
    found = any(torch.equal(big[..., i:i + 32, j:j + 32], cropped) for i in range(17) for j in range(9))
    assert found
