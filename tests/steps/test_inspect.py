"""The samples' grid (``icl inspect``) against torchvision's ``make_grid`` and
``save_image``, which it stands in for without importing torchvision."""

from __future__ import annotations

import pytest
import torch
from torchvision.utils import make_grid, save_image

from icl_cli.steps.inspect import grid_image, save_grid, tile
from tests.kit import imported_by


@pytest.mark.parametrize("shape,columns", [((20, 1, 28, 28), 10), ((7, 3, 32, 32), 3),
                                           ((2, 1, 5, 9), 10), ((12, 3, 4, 4), 5)])
def test_tile_is_torchvisions_make_grid(shape, columns):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape) + columns))
    assert torch.equal(tile(images, columns),
                       make_grid(images, nrow=columns, padding=2, pad_value=1.0))


def test_a_grid_png_has_torchvisions_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    samples, target = torch.rand(30, 1, 28, 28, generator=g) * 2 - 1, torch.arange(30) % 10
    real, real_y = torch.rand(10, 1, 28, 28, generator=g) * 2 - 1, torch.arange(10)
    image = grid_image(samples, target, real, real_y, num_classes=10, per_class=3)
    assert image.shape == (3, 4 * 58 + 2, 10 * 58 + 2)  # 4 rows (a real image + 3), x2 tiles
    save_grid(image, tmp_path / "ours.png")
    save_image(image, tmp_path / "torchvision.png", format="png")
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "torchvision.png").read_bytes()


def test_the_grid_imports_no_torchvision():
    code = ("import torch\nfrom icl_cli.steps.inspect import grid_image, save_grid\n"
            "grid_image(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), "
            "torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), 2)")
    assert imported_by(code, ("torchvision",)) == []
