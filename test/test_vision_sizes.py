"""Every resize mode gives a valid frame for any size from 1x1 up to the pixel cap (issue 9, 7).

Degenerate frames (1x1, one row, one column, extreme aspect ratios) must come out at the model's
size, or be refused as a bad image (ImageError), never fail inside OpenCV.
"""
import numpy as np
import pytest

from qwen_vl_ros.vlm.errors import ImageError
from qwen_vl_ros.vlm.vision import RESIZE_MODES, fit_frame

MODEL_SIZES = [(308, 616), (448, 448), (616, 308), (28, 28)]
FRAME_SIZES = [(1, 1), (1, 2), (2, 1), (1, 4000), (4000, 1), (3, 5000), (5000, 3), (2, 3),
               (7, 13), (480, 640), (1, 8294400 // 4096), (8294400 // 4096, 1)]


def frame(h, w):
    rng = np.random.default_rng(h * 7919 + w)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('mode', RESIZE_MODES)
@pytest.mark.parametrize('size', MODEL_SIZES)
@pytest.mark.parametrize('fh, fw', FRAME_SIZES)
def test_every_mode_gives_the_model_size(mode, size, fh, fw):
    src = frame(fh, fw)
    out = fit_frame(src, size, mode)
    assert out.shape == (*size, 3) and out.dtype == np.uint8


@pytest.mark.parametrize('mode', RESIZE_MODES)
def test_a_single_pixel_fills_the_picture_with_its_colour(mode):
    src = np.array([[[200, 10, 90]]], np.uint8)
    out = fit_frame(src, (308, 616), mode, fill=(0, 0, 0))
    if mode == 'letterbox':   # a square pixel in a 2:1 frame: the middle square, padded
        np.testing.assert_array_equal(out[:, 154:462], np.broadcast_to(src, (308, 308, 3)))
        assert not out[:, :154].any() and not out[:, 462:].any()
    else:
        np.testing.assert_array_equal(out, np.broadcast_to(src, (308, 616, 3)))


def test_crop_of_one_row_keeps_its_centre():
    row = np.zeros((1, 4000, 3), np.uint8)
    row[0, 1999:2001] = (255, 0, 0)   # the two centre pixels, as cut for a 1:2 model
    out = fit_frame(row, (308, 616), 'crop')
    assert (out[..., 0] == 255).all() and not out[..., 1:].any()


@pytest.mark.parametrize('mode', RESIZE_MODES)
def test_pixel_cap_sized_frames(mode):
    """3840x2160 (the default max_pixels) and the same pixel count on one very long side."""
    for h, w in ((2160, 3840), (1, 8294400 // 64), (8294400 // 64, 1)):
        out = fit_frame(np.zeros((h, w, 3), np.uint8), (448, 448), mode)
        assert out.shape == (448, 448, 3)


@pytest.mark.parametrize('bad', [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0, 3), np.uint8),
                                 np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_unusable_arrays_are_a_bad_image(bad):
    for mode in RESIZE_MODES:
        with pytest.raises(ImageError):
            fit_frame(bad, (308, 616), mode)
