import torch

from tinydigits.augment import random_affine


def test_no_augmentation_returns_the_batch_unchanged():
    x = torch.randn(4, 1, 28, 28)
    assert random_affine(x) is x


def test_keeps_shape_dtype_and_background():
    background = -0.4242
    x = torch.full((16, 1, 28, 28), background)
    x[:, :, 10:18, 12:16] = 2.8  # a blob of "ink"
    out = random_affine(x, degrees=5, translate=0.1, scale=0.1, background=background,
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # The corners stay paper: nothing brought in from outside the frame looks like ink.
    torch.testing.assert_close(out[:, :, 0, 0], torch.full((16, 1), background))
    assert not torch.equal(out, x)
    # Ink is moved, not created: total ink roughly preserved by a small rotation.
    ink_in, ink_out = (x - background).sum(), (out - background).sum()
    assert abs(float(ink_out / ink_in) - 1) < 0.25


def test_rotation_only_is_a_rotation_by_at_most_the_limit():
    # A horizontal bar rotated by at most 5 degrees still covers its centre row.
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 14, 4:24] = 1.0
    out = random_affine(x, degrees=5, generator=torch.Generator().manual_seed(1))
    assert (out[:, :, 13:16, 12:16].sum(dim=(1, 2, 3)) > 1.5).all()
    assert (out[:, :, :8].abs().sum(dim=(1, 2, 3)) < 1e-6).all()


def test_same_generator_seed_same_result():
    x = torch.randn(8, 1, 28, 28)
    a = random_affine(x, degrees=5, generator=torch.Generator().manual_seed(3))
    b = random_affine(x, degrees=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
