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


def test_elastic_field_is_smooth_and_of_the_papers_size():
    from tinydigits.augment import elastic_displacement

    field = elastic_displacement(64, 28, 28, alpha=34, sigma=4, generator=torch.Generator().manual_seed(0))
    assert field.shape == (64, 28, 28, 2)
    rms = float(field.pow(2).mean().sqrt())
    assert 0.8 < rms < 2.0  # about 1.4 px for Simard's alpha 34, sigma 4 (interior; edges are damped)
    # Smooth: neighbours move together (unsmoothed noise would differ by ~alpha * 0.8).
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert float(step) < 0.2 * float(field.abs().mean())


def test_elastic_distortion_moves_ink_locally_and_keeps_paper():
    background = -0.4242
    x = torch.full((16, 1, 28, 28), background)
    x[:, :, 6:22, 13:15] = 2.8  # a vertical stroke
    out = random_affine(x, elastic=34, background=background, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, x)
    torch.testing.assert_close(out[:, :, 0, 0], torch.full((16, 1), background))
    # A distortion of ~1.4 px bends the stroke; it does not throw the ink far from where it was.
    ink = (out - background).clamp(min=0)
    assert float(ink[:, :, :, 8:20].sum() / ink.sum()) > 0.97
