"""Batched, on-device augmentation: random rotation, translation and scale.

One affine grid per batch instead of a per-sample PIL loop, so augmentation
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
    background: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate each image by U(-degrees, degrees), shift by up to ``translate`` of its
    size and scale by U(1 - scale, 1 + scale), all independently per image.

    ``background`` is the value of an empty pixel (for normalized MNIST it is not 0),
    so that pixels moved in from outside the frame look like paper, not ink.
    """
    if degrees == 0 and translate == 0 and scale == 0:
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
    shifted = images - background
    warped = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped + background
