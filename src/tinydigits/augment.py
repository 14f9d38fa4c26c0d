"""Batched, on-device augmentation: random rotation, translation and scale, and elastic distortion.

One sampling grid per batch instead of a per-sample PIL loop, so augmentation
costs a few percent of a training step and runs wherever the batch lives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    *,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    elastic: float = 0.0,
    elastic_sigma: float = 4.0,
    background: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate each image by U(-degrees, degrees), shift by up to ``translate`` of its
    size and scale by U(1 - scale, 1 + scale), all independently per image; with
    ``elastic`` > 0 also distort it by :func:`elastic_displacement` (in the same resampling).

    ``background`` is the value of an empty pixel (for normalized MNIST it is not 0),
    so that pixels moved in from outside the frame look like paper, not ink.
    """
    if degrees == 0 and translate == 0 and scale == 0 and elastic == 0:
        return images
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=generator.device if generator else "cpu")
        return ((u * 2 - 1) * limit).to(device=images.device, dtype=images.dtype)

    angle = uniform(math.radians(degrees))
    zoom = 1 + uniform(scale)
    # affine_grid maps output coordinates to input ones, in units of half the image size.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(2 * translate)], dim=1),
            torch.stack([sin, cos, uniform(2 * translate)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic:
        height, width = images.shape[-2:]
        pixels = elastic_displacement(n, height, width, elastic, elastic_sigma, generator)
        # Pixels -> grid units (half the image is 1); the grid's last axis is (x, y).
        scale_to_grid = torch.tensor([2 / width, 2 / height], device=grid.device, dtype=grid.dtype)
        grid = grid + pixels.to(device=grid.device, dtype=grid.dtype) * scale_to_grid
    shifted = images - background
    warped = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped + background


def elastic_displacement(
    n: int, height: int, width: int, alpha: float, sigma: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Simard et al. (2003) elastic fields: uniform(-1, 1) noise per pixel and axis, smoothed
    by a Gaussian of ``sigma`` pixels and scaled by ``alpha``; shape (n, height, width, 2), in
    pixels. Smoothing divides the noise's spread by about 2*sqrt(pi)*sigma, so alpha 34 with
    sigma 4 (the paper's MNIST setting) moves pixels by about 1.4 px (root mean square)."""
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(n * 2, 1, height, width, generator=generator, device=device) * 2 - 1
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=noise.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    # A Gaussian is separable: a row pass and a column pass instead of one (2r+1)^2 kernel.
    smooth = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, radius))
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return (alpha * smooth).view(n, 2, height, width).permute(0, 2, 3, 1)
