"""RGB frames -> the vision model's fixed size -> the uint8 NHWC patch tensor it takes.

Done in numpy/OpenCV (no torch, no PIL): resizing is the only arithmetic; the patch tensor is a
pure re-arrangement of pixels, built with one reshape/transpose and a single copy. Normalisation
(mean/std) happens inside the compiled vision model.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ImageError

RESIZE_MODES = ('stretch', 'letterbox', 'crop')


def check_frame(frame) -> np.ndarray:
    """Return ``frame`` as an HxWx3 uint8 array or raise ImageError saying what is wrong."""
    if not isinstance(frame, np.ndarray):
        raise ImageError(f'a frame must be a numpy array, got {type(frame).__name__}')
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageError(f'a frame must be HxWx3 uint8 RGB, got shape {frame.shape} '
                         f'dtype {frame.dtype}')
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ImageError(f'empty frame of shape {frame.shape}')
    return frame


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    if frame.shape[:2] == (h, w):
        return frame
    if frame.strides[2] < 0:
        # A BGR buffer seen as RGB through a reversed channel axis (image_msg's zero-copy bgr8
        # view). Resizing works per channel: resize in the buffer's own order, then reverse
        # the small result; the bytes equal converting first, without a full-size copy.
        return np.ascontiguousarray(_resize(frame[:, :, ::-1], h, w)[:, :, ::-1])
    if h * w >= frame.shape[0] * frame.shape[1]:
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC)
    # Shrinking. INTER_AREA to an arbitrary size is slow (~4 ms for 1080p -> 448x448), so a
    # big frame is first halved with an exact 2x2 box (INTER_AREA's fast integer path, ~0.4 ms)
    # while both sides stay at least twice the target; less than 3x then remains, done
    # bilinearly. Small frames (no halving) and extreme aspect ratios keep one INTER_AREA.
    halved = False
    while frame.shape[0] >= 2 * h and frame.shape[1] >= 2 * w:
        fh, fw = frame.shape[0] // 2, frame.shape[1] // 2
        frame = cv2.resize(frame[:2 * fh, :2 * fw], (fw, fh), interpolation=cv2.INTER_AREA)
        halved = True
    if halved and frame.shape[0] < 3 * h and frame.shape[1] < 3 * w:
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def fit_frame(frame: np.ndarray, size: tuple, mode: str = 'stretch',
              fill: tuple = (0, 0, 0)) -> np.ndarray:
    """Bring an RGB frame to ``size`` = (H, W).

    stretch: ignore the aspect ratio (what AXERA's demo does); letterbox: keep it and pad with
    ``fill``; crop: keep it and cut the centre. A frame already at ``size`` is returned as is.
    Any frame of at least 1x1 pixel gives a valid result in every mode (a crop or letterbox
    keeps at least one pixel row and column); ImageError for anything else.
    """
    frame = check_frame(frame)
    try:
        return _fit(frame, size, mode, fill)
    except cv2.error as e:  # a size OpenCV cannot resize: a bad image, not an internal error
        raise ImageError(f'cannot resize a {frame.shape[1]}x{frame.shape[0]} frame to '
                         f'{size[1]}x{size[0]} ({mode}): {" ".join(str(e).split())}') from None


def _fit(frame: np.ndarray, size: tuple, mode: str, fill: tuple) -> np.ndarray:
    h, w = size
    fh, fw = frame.shape[:2]
    if mode == 'stretch' or (fh, fw) == (h, w):
        return _resize(frame, h, w)
    if mode == 'letterbox':
        scale = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
        out = np.empty((h, w, 3), np.uint8)
        out[...] = np.asarray(fill, np.uint8)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[top:top + nh, left:left + nw] = _resize(frame, nh, nw)
        return out
    if mode == 'crop':
        scale = max(h / fh, w / fw)
        # at least one row / column: a 1x4000 frame cropped to 308x616 keeps 1x2 pixels
        ch = min(fh, max(1, round(h / scale)))
        cw = min(fw, max(1, round(w / scale)))
        top, left = (fh - ch) // 2, (fw - cw) // 2
        return _resize(frame[top:top + ch, left:left + cw], h, w)
    raise ImageError(f'resize mode {mode!r} is not one of {", ".join(RESIZE_MODES)}')


def frames_to_patches(frames: list, patch: int = 14, merge: int = 2,
                      temporal: int = 2) -> np.ndarray:
    """Same-size HxWx3 RGB frames -> uint8 ``(groups, gh*gw, temporal*patch*patch, 3)``.

    Frames are taken ``temporal`` at a time (an odd count repeats the last frame; one image is
    two identical frames). Patch order is Qwen2-VL's: merge windows in raster order, the 2x2
    patches of a window, then (time, row, column, channel) inside a patch. This equals
    transformers' Qwen2VLImageProcessor ``pixel_values`` (before normalisation) transposed to
    channel-last, bit for bit.
    """
    if not frames:
        raise ImageError('no frames to encode')
    h, w = frames[0].shape[:2]
    unit = patch * merge
    if h % unit or w % unit:
        raise ImageError(f'frame size {h}x{w} is not a multiple of {unit}')
    if any(f.shape != frames[0].shape for f in frames):
        raise ImageError('all frames of one request must have the same size')
    n = len(frames)
    groups = -(-n // temporal)
    bh, bw = h // unit, w // unit
    if n == 1:
        # One image: rearrange it once, then write it to every temporal slot of each patch
        # (patch = (time, row, column, channel), so the slots are contiguous halves).
        x = frames[0].reshape(bh, merge, patch, bw, merge, patch, 3)
        x = x.transpose(0, 3, 1, 4, 2, 5, 6).reshape(bh * bw * merge * merge, 1, -1)
        out = np.empty((1, bh * bw * merge * merge, temporal, patch * patch * 3), np.uint8)
        out[0] = x
        return out.reshape(1, bh * bw * merge * merge, temporal * patch * patch, 3)
    stack = np.stack(list(frames) + [frames[-1]] * (groups * temporal - n))
    x = stack.reshape(groups, temporal, bh, merge, patch, bw, merge, patch, 3)
    # -> (group, block row, block col, merge row, merge col, time, patch row, patch col, channel)
    x = x.transpose(0, 2, 5, 3, 6, 1, 4, 7, 8)
    return np.ascontiguousarray(x).reshape(groups, bh * bw * merge * merge,
                                           temporal * patch * patch, 3)
