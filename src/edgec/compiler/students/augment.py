"""Augmented views for function matching (Beyer et al., 2022, "Knowledge distillation: a good
teacher is patient and consistent").

A student matches the teacher's *function*, not its outputs on the training set: every batch is
turned into fresh views, the teacher is asked for its logits on exactly those views, and the
student learns them. The views are chosen for the kind of input (:func:`policy_for`):

* images (``[N, C, H, W]`` with ``H, W >= 8``): a random affine warp per sample — a random
  crop (shift and zoom), a small rotation and shear — optionally a horizontal flip, then mixup;
* any other tensor: small Gaussian noise (a share of each feature's spread), then mixup.

Mixup (Zhang et al., 2018) blends each sample with another of the batch,
``lam * a + (1 - lam) * b`` with ``lam ~ Beta(alpha, alpha)``; labels, where a student learns
from labels, are blended alike (:func:`mix_targets`). Every random draw comes from the
``torch.Generator`` passed in, so a seed gives the same views in every run — which is also what
lets the teacher cache answer the next student's views without running the teacher again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_IMAGE_SIDE = 8


@dataclass(frozen=True)
class AugmentPolicy:
    """How views are drawn.

    Attributes:
        kind: ``image``, ``tensor`` or ``none`` (the inputs as they are).
        shift: Largest shift, as a share of the image side (random crop).
        zoom: Largest zoom in or out, as a share (0.15: scale 0.85 to 1.15).
        rotate: Largest rotation in degrees.
        shear: Largest shear.
        flip: Flip half the images left-right (not for digits or text).
        noise: Gaussian noise for tensors, as a share of each feature's standard deviation.
        mixup: Share of samples blended with another one.
        mixup_alpha: ``alpha`` of the Beta distribution ``lam`` is drawn from.
    """

    kind: str = "image"
    shift: float = 0.125
    zoom: float = 0.15
    rotate: float = 15.0
    shear: float = 0.15
    flip: bool = False
    noise: float = 0.1
    mixup: float = 0.5
    mixup_alpha: float = 1.0

    def to_json(self) -> dict:
        """The manifest form (only the fields that apply to ``kind``)."""
        if self.kind == "none":
            return {"kind": "none"}
        mix = {"mixup": self.mixup, "mixup_alpha": self.mixup_alpha}
        if self.kind == "tensor":
            return {"kind": "tensor", "noise": self.noise, **mix}
        geometry = {k: getattr(self, k) for k in ("shift", "zoom", "rotate", "shear", "flip")}
        return {"kind": "image", **geometry, **mix}


NO_AUGMENTATION = AugmentPolicy(kind="none")


def policy_for(sample_shape: tuple[int, ...], augment: str = "auto") -> AugmentPolicy:
    """The policy for samples of ``sample_shape`` (no batch dimension).

    Args:
        sample_shape: One input's shape, e.g. ``(1, 32, 32)``.
        augment: ``auto`` (by the input's kind), ``none``, or ``image``/``tensor`` to choose.

    Raises:
        ValueError: ``image`` asked for samples that are not ``[C, H, W]`` with
            ``H, W >= 8``, or an unknown ``augment``.
    """
    is_image = len(sample_shape) == 3 and min(sample_shape[1:]) >= MIN_IMAGE_SIDE
    if augment == "none":
        return NO_AUGMENTATION
    if augment == "auto":
        return AugmentPolicy(kind="image" if is_image else "tensor")
    if augment == "image":
        if not is_image:
            raise ValueError(
                f"image augmentation needs [C, H, W] samples with H, W >= {MIN_IMAGE_SIDE}, "
                f"got {list(sample_shape)}"
            )
        return AugmentPolicy(kind="image")
    if augment == "tensor":
        return AugmentPolicy(kind="tensor")
    raise ValueError(f"augment must be auto, none, image or tensor, not '{augment}'")


@dataclass(frozen=True)
class Views:
    """A batch of views and how they were mixed.

    Attributes:
        x: The views.
        partner: For each view, the index (within the batch) of the sample blended in.
        lam: For each view, the weight of its own sample (1 where not mixed).
    """

    x: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor


def make_views(
    x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator, spread: torch.Tensor
) -> Views:
    """Views of the batch ``x`` drawn with ``generator``.

    Args:
        x: A batch of inputs.
        policy: How to draw the views.
        generator: The source of every random draw.
        spread: Each feature's standard deviation over the data (for tensor noise).
    """
    n = len(x)
    if policy.kind == "none" or n == 0:
        return Views(x, torch.arange(n), torch.ones(n))
    if policy.kind == "image":
        x = _warp(x, policy, generator)
    else:
        x = x + policy.noise * spread * torch.randn(x.shape, generator=generator)
    partner = torch.randperm(n, generator=generator)
    u = _beta(n, policy.mixup_alpha, generator)
    mixed = torch.rand(n, generator=generator) < policy.mixup
    # The larger weight goes to the sample itself, so a view stays mostly one sample.
    lam = torch.where(mixed, torch.maximum(u, 1 - u), torch.ones(n))
    shape = (n,) + (1,) * (x.dim() - 1)
    views = lam.view(shape) * x + (1 - lam).view(shape) * x[partner]
    return Views(views, partner, lam)


def mix_targets(targets: torch.Tensor, views: Views) -> torch.Tensor:
    """Class-probability targets blended like the views (one row per view)."""
    lam = views.lam.view(-1, 1)
    return lam * targets + (1 - lam) * targets[views.partner]


def _beta(n: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from Beta(alpha, alpha), ``alpha`` rounded to a whole number >= 1.

    ``torch.distributions`` samples without a generator (not reproducible here), so the two
    Gamma(alpha) draws are sums of exponentials made from the generator's uniforms.
    """
    if alpha == 1.0:
        return torch.rand(n, generator=generator)
    k = max(1, round(alpha))
    a = -torch.log(torch.rand(n, k, generator=generator).clamp_min(1e-12)).sum(1)
    b = -torch.log(torch.rand(n, k, generator=generator).clamp_min(1e-12)).sum(1)
    return a / (a + b)


def _warp(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """A random affine warp per image (crop as shift and zoom, rotation, shear, flip)."""
    n = len(x)

    def uniform(size: float, *shape: int) -> torch.Tensor:
        return (torch.rand(n, *shape, generator=generator) * 2 - 1) * size

    angle = uniform(math.radians(policy.rotate))
    scale = 1.0 + uniform(policy.zoom)
    shear = uniform(policy.shear)
    shift = uniform(2 * policy.shift, 2)  # grid units: the side is 2
    flip = torch.ones(n)
    if policy.flip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([flip * cos, -sin + shear, shift[:, 0]], dim=1),
            torch.stack([flip * sin, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
