"""Frames -> patch tensor, against transformers' Qwen2VLImageProcessor (the reference)."""

import warnings

import numpy as np
import pytest

from qwen_vl_ros.vlm.errors import ImageError
from qwen_vl_ros.vlm.vision import fit_frame, frames_to_patches

pytest.importorskip('transformers', reason='transformers is the reference for the patch layout')
from hf_processor import image_processor_class, video_frames_supported  # noqa: E402


def _hf_processor():
    return image_processor_class()(
        do_resize=False, do_rescale=False, do_normalize=False, patch_size=14,
        temporal_patch_size=2, merge_size=2)


def _to_hf_layout(patches):
    """Our (groups, seq, 392, 3) channel-last patches -> HF's (groups*seq, 3*392) rows."""
    g, seq, per, c = patches.shape
    return patches.transpose(0, 1, 3, 2).reshape(g * seq, c * per).astype(np.float32)


@pytest.mark.parametrize('h,w', [(448, 448), (196, 280), (280, 196)])
def test_image_patches_bit_identical_to_hf(h, w):
    rng = np.random.default_rng(h * w)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = _hf_processor()(images=[frame], return_tensors='np')
    ours = frames_to_patches([frame])
    assert ours.shape == (1, (h // 14) * (w // 14), 392, 3)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(_to_hf_layout(ours), out['pixel_values'])
    assert list(out['image_grid_thw'][0]) == [1, h // 14, w // 14]


@pytest.mark.parametrize('n', [4, 5])
def test_video_patches_bit_identical_to_hf(n):
    if not video_frames_supported():
        pytest.skip("transformers 5.x's video processor needs torchvision (not installed here)")
    rng = np.random.default_rng(n)
    frames = [rng.integers(0, 256, (112, 168, 3), dtype=np.uint8) for _ in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = _hf_processor()(images=None, videos=[frames], return_tensors='np')
    ours = frames_to_patches(frames)
    groups = (n + 1) // 2
    assert ours.shape[0] == groups
    np.testing.assert_array_equal(_to_hf_layout(ours), out['pixel_values_videos'])
    assert list(out['video_grid_thw'][0]) == [groups, 8, 12]


def test_fit_frame_modes_keep_geometry():
    # A 100x200 frame: left half red, right half blue, to see what each mode keeps.
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :100, 0] = 255
    frame[:, 100:, 2] = 255
    same = fit_frame(frame[:56, :56], (56, 56))
    assert np.shares_memory(same, frame)  # already at size: no resize, no copy

    stretched = fit_frame(frame, (56, 56), 'stretch')
    assert stretched.shape == (56, 56, 3)
    assert stretched[28, 5, 0] == 255 and stretched[28, 50, 2] == 255

    boxed = fit_frame(frame, (56, 56), 'letterbox', fill=(7, 8, 9))
    # 2:1 content fills the width and 28 rows in the middle; the rest is fill colour.
    assert tuple(boxed[2, 28]) == (7, 8, 9) and tuple(boxed[53, 28]) == (7, 8, 9)
    assert boxed[28, 5, 0] == 255 and boxed[28, 50, 2] == 255

    cropped = fit_frame(frame, (56, 56), 'crop')
    # the centre 100x100 square: half red, half blue, no fill
    assert cropped[28, 5, 0] == 255 and cropped[28, 50, 2] == 255
    assert cropped.min(axis=(0, 1)).tolist() == [0, 0, 0]


@pytest.mark.parametrize('bad,why', [
    (np.zeros((10, 10), np.uint8), 'HxWx3'),
    (np.zeros((10, 10, 3), np.float32), 'uint8'),
    (np.zeros((10, 10, 4), np.uint8), 'HxWx3'),
    ([[1, 2, 3]], 'numpy array'),
])
def test_bad_frames_get_clear_errors(bad, why):
    with pytest.raises(ImageError, match=why):
        fit_frame(bad, (28, 28))


def test_patch_size_and_mixed_sizes_refused():
    with pytest.raises(ImageError, match='multiple of 28'):
        frames_to_patches([np.zeros((30, 28, 3), np.uint8)])
    with pytest.raises(ImageError, match='same size'):
        frames_to_patches([np.zeros((28, 28, 3), np.uint8), np.zeros((56, 28, 3), np.uint8)])


@pytest.mark.parametrize('mode', ['stretch', 'letterbox', 'crop'])
@pytest.mark.parametrize('hw', [(1080, 1920), (300, 500), (100, 60)])
def test_bgr_view_fits_like_its_rgb_copy(mode, hw):
    # image_msg hands bgr8 frames over as a channel-reversed view (no copy); fitting it must
    # give exactly what fitting the RGB copy gives
    bgr = np.random.default_rng(hw[0]).integers(0, 256, hw + (3,), dtype=np.uint8)
    view = bgr[:, :, ::-1]
    want = fit_frame(np.ascontiguousarray(view), (448, 448), mode)
    got = fit_frame(view, (448, 448), mode)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(frames_to_patches([got]), frames_to_patches([want]))
