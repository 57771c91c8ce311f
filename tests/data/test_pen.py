"""Pen-style augmentation (data/pen.py): each part does what its name says, on hand-made images."""
from __future__ import annotations

import torch

from fewshot_mann.data.pen import HANDWRITING, NO_PEN, PenStyle, blur, dilate


def dot(size: int = 28, at: tuple[int, int] = (14, 14)) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, at[0], at[1]] = 1.0
    return x


def centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    img = x[0, 0]
    rows, cols = torch.meshgrid(torch.arange(img.shape[0]).float(), torch.arange(img.shape[1]).float(), indexing="ij")
    return float((img * rows).sum() / img.sum()), float((img * cols).sum() / img.sum())


def test_no_pen_and_probability_zero_return_the_images_unchanged():
    x = torch.rand(4, 1, 28, 28)
    assert NO_PEN(x) is x
    assert torch.equal(PenStyle(probability=0.0, max_dilation=2, max_blur=1.0)(x), x)


def test_identity_ranges_leave_the_image_as_it_was():
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(PenStyle(probability=1.0)(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_dilation_thickens_a_dot_into_a_square_per_image():
    x = torch.cat([dot(), dot()])
    out = dilate(x, torch.tensor([0, 1]))
    assert torch.equal(out[0], x[0])
    assert int(out[1].sum()) == 9 and out[1, 0, 13:16, 13:16].eq(1).all()


def test_blur_spreads_ink_keeps_its_mass_and_sigma_zero_is_identity():
    x = torch.cat([dot(), dot()])
    out = blur(x, torch.tensor([0.0, 1.0]))
    assert torch.allclose(out[0], x[0], atol=1e-6)
    assert abs(float(out[1].sum()) - 1.0) < 1e-5 and float(out[1].max()) < 0.25 and float(out[1, 0, 14, 15]) > 0.05


def test_shift_moves_ink_right_and_down_by_the_drawn_pixels():
    style = PenStyle(probability=1.0, max_shift=2.0)
    u = torch.tensor([[0.5, 0.5, 0.5, 0.5, 1.0, 1.0]])  # neutral scale, squeeze, slant, angle; shift +2, +2
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:18, 10:18] = 1.0
    from fewshot_mann.data.pen import warp
    moved = warp(x, style._affine(u, 28))
    r0, c0 = centre_of_mass(x)
    r1, c1 = centre_of_mass(moved)
    assert abs((r1 - r0) - 2.0) < 0.05 and abs((c1 - c0) - 2.0) < 0.05


def test_squeeze_narrows_and_scale_shrinks_about_the_centre():
    from fewshot_mann.data.pen import warp
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 6:22, 6:22] = 1.0  # a 16 x 16 square, centred
    narrow = warp(x, PenStyle(squeeze=(0.5, 0.5))._affine(torch.full((1, 6), 0.5), 28))
    small = warp(x, PenStyle(scale=(0.5, 0.5))._affine(torch.full((1, 6), 0.5), 28))
    width = lambda img: float((img[0, 0].sum(0) > 0.5).sum())  # noqa: E731
    height = lambda img: float((img[0, 0].sum(1) > 0.5).sum())  # noqa: E731
    assert width(narrow) == 8 and height(narrow) == 16
    assert width(small) == 8 and height(small) == 8
    assert abs(centre_of_mass(small)[1] - centre_of_mass(x)[1]) < 0.05


def test_the_handwriting_preset_is_seeded_keeps_range_and_restyles_most_images():
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 8:20, 13:15] = 1.0  # a thin bar
    a = HANDWRITING(x, torch.Generator().manual_seed(3))
    b = HANDWRITING(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1
    changed = (a - x).abs().flatten(1).amax(1) > 1e-3
    assert 0.6 <= float(changed.float().mean()) <= 0.95  # probability 0.8
