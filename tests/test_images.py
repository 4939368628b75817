"""Sample grids as people see them: pixel mapping, orientation, one class per column, not blank."""

import numpy as np
import torch
from PIL import Image

from switchsweep.trainers.data.images import save_image_grid
from switchsweep.trainers.loop import trainer as loop
from switchsweep.trainers.loop.trainer import Trainer

SCALE, PAD = 4, 1


def _cells(png, rows, cols, h=8, w=8):
    """The grid's cells at their original resolution, [rows, cols, h, w] (uint8), and the padding pixels."""
    arr = np.asarray(Image.open(png))
    assert arr.shape[:2] == ((rows * (h + PAD) + PAD) * SCALE, (cols * (w + PAD) + PAD) * SCALE)
    small = arr[::SCALE, ::SCALE]
    cells = np.stack(
        [
            np.stack(
                [
                    small[PAD + r * (h + PAD) : PAD + r * (h + PAD) + h, PAD + c * (w + PAD) : PAD + c * (w + PAD) + w]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )
    pad = small.copy()
    for r in range(rows):
        for c in range(cols):
            pad[PAD + r * (h + PAD) : PAD + r * (h + PAD) + h, PAD + c * (w + PAD) : PAD + c * (w + PAD) + w] = 0
    return cells, pad


def test_pixels_map_minus_one_to_black_and_one_to_white_without_transposing(tmp_path):
    img = torch.full((1, 1, 8, 8), -1.0)
    img[0, 0, 0, 5] = 1.0  # row 0, column 5: a transposed grid would put it at row 5, column 0
    img[0, 0, 7, :] = 0.0  # the bottom row mid-grey
    cells, _ = _cells(save_image_grid(img, tmp_path / "g.png", nrow=1, scale=SCALE, pad=PAD), 1, 1)
    cell = cells[0, 0]
    assert cell[0, 5] == 255 and cell[5, 0] == 0 and cell[0, 0] == 0
    assert (cell[7] == 128).all()  # (0 + 1) * 127.5 rounded
    assert cell.dtype == np.uint8


def test_values_outside_the_range_are_clipped(tmp_path):
    img = torch.tensor([[[[-3.0, 0.5], [2.0, -0.5]]]])
    cells, _ = _cells(save_image_grid(img, tmp_path / "g.png", nrow=1, scale=SCALE, pad=PAD), 1, 1, h=2, w=2)
    np.testing.assert_array_equal(cells[0, 0], [[0, 191], [255, 64]])


def test_sample_grid_puts_one_class_per_column(tiny_cfg, tmp_path, monkeypatch):
    tiny_cfg.sample.per_class = 3
    seen = {}

    def fake_sample_images(model, diffusion, labels, **kw):
        seen["labels"] = labels.clone()
        return (labels.float() / 9 * 2 - 1).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)  # class c -> grey level c / 9

    monkeypatch.setattr(loop, "sample_images", fake_sample_images)
    png = Trainer(tiny_cfg).sample_grid(tmp_path / "grid.png")
    cells, pad = _cells(png, rows=3, cols=10)
    assert sorted(seen["labels"].tolist()) == sorted(list(range(10)) * 3)
    for col in range(10):
        assert (cells[:, col] == round(col / 9 * 255)).all(), col
    assert (pad == 0).all()


def test_a_real_sample_grid_is_not_blank(tiny_cfg, tmp_path):
    tiny_cfg.sample.per_class = 1
    tiny_cfg.sample.steps = 3
    cells, _ = _cells(Trainer(tiny_cfg).sample_grid(tmp_path / "grid.png"), rows=1, cols=10)
    assert cells.std() > 0 and 0.05 < (cells > 0).mean() < 0.95


def test_sample_grid_takes_per_class_from_its_caller(tiny_cfg, tmp_path):
    """A sweep trainer has sample.per_class=0 (no grid at the end of training) and asks for its grids
    at each evaluation with the sweep's own per_class: they must not come out empty."""
    tiny_cfg.sample.per_class = 0
    tiny_cfg.sample.steps = 2
    cells, _ = _cells(Trainer(tiny_cfg).sample_grid(tmp_path / "grid.png", per_class=2), rows=2, cols=10)
    assert cells.std() > 0
