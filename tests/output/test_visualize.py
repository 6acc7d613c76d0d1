import numpy as np
import torch
from PIL import Image

from pixelwise.output.visualize import colorize, overlay, palette_for, plot_curves, save_index_png


def test_index_png_keeps_class_indices_and_palette(tmp_path):
    labels = np.array([[0, 1], [2, 1]])
    palette = palette_for(3, [(10, 20, 30)])
    save_index_png(labels, palette, tmp_path / "l.png")
    img = Image.open(tmp_path / "l.png")
    assert img.mode == "P"
    np.testing.assert_array_equal(np.array(img), labels)
    assert img.getpalette()[:3] == [10, 20, 30]
    assert len(set(palette)) == 3


def test_overlay_blends_and_skips_background():
    image = torch.full((1, 2, 2), 0.5)
    labels = np.array([[0, 1], [1, 0]])
    palette = [(0, 0, 0), (255, 0, 0)]
    out = overlay(image, labels, palette, alpha=0.5, skip_class=0)
    assert out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (128, 128, 128)  # untouched grey
    assert tuple(out[0, 1]) == (192, 64, 64)  # half red
    assert tuple(colorize(labels, palette)[1, 0]) == (255, 0, 0)


def test_plot_curves_reads_a_log(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss,lr,val_miou\n1,0.9,0.1,\n2,0.7,0.1,0.4\n3,0.5,0.1,\n4,0.4,0.1,0.6\n")
    path = plot_curves(tmp_path / "log.csv", tmp_path / "c.png")
    assert Image.open(path).size[0] > 500
