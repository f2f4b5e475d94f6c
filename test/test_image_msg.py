"""qwen_vl_ros.image_msg against expectations built independently with OpenCV and numpy.

Messages are real sensor_msgs/msg/Image and CompressedImage objects from the ROS wheels; every
encoding is made from a known RGB picture (cv2 / numpy forward conversions) and must come back.
"""
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from qwen_vl_ros import image_msg
from qwen_vl_ros.image_msg import compressed_to_rgb, image_to_rgb, SUPPORTED_ENCODINGS
from qwen_vl_ros.vlm.errors import ImageError, VLMError

H, W = 48, 64


def smooth_rgb(h=H, w=W, seed=0):
    """Return a smooth colourful picture (gradients + a soft blob): demosaicing stays exact-ish."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 1.5, 3)
    r = 40 + 170 * x / (w - 1)
    g = 30 + 180 * y / (h - 1)
    blue = 128 + 90 * np.sin(a * x / 9.0 + b) * np.cos(c * y / 7.0)
    return np.clip(np.stack([r, g, blue], axis=2), 0, 255).round().astype(np.uint8)


def make_image(data, height, width, encoding, step, is_bigendian=False):
    msg = Image()
    msg.header.frame_id = 'camera'
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.step, msg.is_bigendian = step, is_bigendian
    msg.data = bytes(data)
    return msg


def padded_rows(arr: np.ndarray, pad=0):
    """Return (bytes, step) of an array's rows, with `pad` garbage bytes after each row."""
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(arr.shape[0], -1)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xA5, np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


def msg_from_array(arr: np.ndarray, encoding, is_bigendian=False, pad=0):
    """Build an Image whose rows are the rows of `arr` (HxW or HxWxC, any dtype)."""
    data, step = padded_rows(arr, pad)
    return make_image(data, arr.shape[0], arr.shape[1], encoding, step, is_bigendian)


def gray3(gray):
    return np.repeat(gray[:, :, None], 3, axis=2)


# --- the plain encodings -----------------------------------------------------------------------

def test_rgb8_is_a_view_of_the_message_data():
    rgb = smooth_rgb()
    msg = msg_from_array(rgb, 'rgb8')
    out = image_to_rgb(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)), 'rgb8 must not be copied'


@pytest.mark.parametrize('encoding, code', [
    ('bgr8', cv2.COLOR_RGB2BGR),
    ('rgba8', cv2.COLOR_RGB2RGBA),
    ('bgra8', cv2.COLOR_RGB2BGRA),
])
def test_colour_8bit(encoding, code):
    rgb = smooth_rgb()
    msg = msg_from_array(cv2.cvtColor(rgb, code), encoding)
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    if encoding == 'bgr8':  # a channel-reversed view of the message data, not a copy
        assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_mono8():
    rgb = smooth_rgb()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(image_to_rgb(msg_from_array(gray, 'mono8')), gray3(gray))


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_high_byte_in_the_stated_byte_order(bigendian):
    rng = np.random.default_rng(1)
    gray16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    dtype = '>u2' if bigendian else '<u2'
    msg = make_image(gray16.astype(dtype).tobytes(), H, W, 'mono16', 2 * W, bigendian)
    np.testing.assert_array_equal(image_to_rgb(msg), gray3((gray16 >> 8).astype(np.uint8)))


@pytest.mark.parametrize('encoding, code', [('rgb16', None), ('bgr16', cv2.COLOR_RGB2BGR),
                                            ('rgba16', cv2.COLOR_RGB2RGBA),
                                            ('bgra16', cv2.COLOR_RGB2BGRA)])
@pytest.mark.parametrize('bigendian', [False, True])
def test_colour_16bit(encoding, code, bigendian):
    rgb = smooth_rgb()
    src = rgb if code is None else cv2.cvtColor(rgb, code)
    wide = (src.astype(np.uint16) << 8) | 0x3C  # low byte must be dropped
    data = wide.astype('>u2' if bigendian else '<u2').tobytes()
    msg = make_image(data, H, W, encoding, W * src.shape[2] * 2, bigendian)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


# --- YUV 4:2:2 ---------------------------------------------------------------------------------

def pairwise_rgb():
    """Return a picture whose horizontal pixel pairs share one colour: 4:2:2 loses nothing."""
    rgb = smooth_rgb()
    rgb[:, 1::2] = rgb[:, 0::2]
    return rgb


# ROS: yuv422 == uyvy (U Y0 V Y1), yuv422_yuy2 == yuyv (Y0 U Y1 V).
@pytest.mark.parametrize('encoding, code', [
    ('uyvy', 'COLOR_RGB2YUV_UYVY'), ('yuv422', 'COLOR_RGB2YUV_UYVY'),
    ('yuyv', 'COLOR_RGB2YUV_YUYV'), ('yuv422_yuy2', 'COLOR_RGB2YUV_YUYV'),
])
def test_yuv422_round_trip(encoding, code):
    if not hasattr(cv2, code):
        pytest.skip(f'this OpenCV ({cv2.__version__}) has no {code}')
    rgb = pairwise_rgb()
    packed = cv2.cvtColor(rgb, getattr(cv2, code))  # (H, W, 2)
    out = image_to_rgb(msg_from_array(packed, encoding))
    assert np.abs(out.astype(int) - rgb).max() <= 4


# Pure red in BT.601 limited range: Y 81, U (Cb) 90, V (Cr) 240; packed by hand.
@pytest.mark.parametrize('encoding, macro_pixel', [
    ('yuv422', [90, 81, 240, 81]), ('uyvy', [90, 81, 240, 81]),
    ('yuv422_yuy2', [81, 90, 81, 240]), ('yuyv', [81, 90, 81, 240]),
])
def test_yuv422_byte_order_by_hand(encoding, macro_pixel):
    data = bytes(macro_pixel) * (4 * 8 // 2)
    out = image_to_rgb(make_image(data, 4, 8, encoding, 16))
    assert out.shape == (4, 8, 3)
    r, g, b = (int(v) for v in out[1, 2])
    assert r > 230 and g < 25 and b < 25, f'{encoding}: pure red came back as {(r, g, b)}'


# --- YUV 4:2:0 semi-planar ---------------------------------------------------------------------

@pytest.mark.parametrize('encoding', ['nv12', 'nv21'])
def test_nv12_nv21(encoding):
    rgb = cv2.resize(cv2.resize(smooth_rgb(), (W // 2, H // 2), interpolation=cv2.INTER_AREA),
                     (W, H), interpolation=cv2.INTER_NEAREST)  # 2x2 blocks of one colour
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y, u, v = i420[:H * W], i420[H * W:H * W * 5 // 4], i420[H * W * 5 // 4:]
    first, second = (u, v) if encoding == 'nv12' else (v, u)
    chroma = np.stack([first, second], axis=1).reshape(H // 2, W)
    planes = np.concatenate([y.reshape(H, W), chroma], axis=0)
    out = image_to_rgb(make_image(planes.tobytes(), H, W, encoding, W))
    assert np.abs(out.astype(int) - rgb).max() <= 4


# --- Bayer -------------------------------------------------------------------------------------

def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB picture through a Bayer filter named the ROS way (top-left 2x2 block)."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    channel = {'r': 0, 'g': 1, 'b': 2}
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[k]]]
    return out


PATTERNS = ['rggb', 'bggr', 'gbrg', 'grbg']
SCENES = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255),
          'orange': (220, 120, 30)}


@pytest.mark.parametrize('pattern', PATTERNS)
@pytest.mark.parametrize('scene', list(SCENES))
def test_bayer8_uniform_scene_keeps_its_colour(pattern, scene):
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[:] = SCENES[scene]
    out = image_to_rgb(msg_from_array(mosaic(rgb, pattern), f'bayer_{pattern}8'))
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer8_smooth_picture(pattern):
    rgb = smooth_rgb()
    out = image_to_rgb(msg_from_array(mosaic(rgb, pattern), f'bayer_{pattern}8'))
    err = np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2])
    assert err.mean() < 3.0 and err.max() < 40


@pytest.mark.parametrize('pattern', PATTERNS)
@pytest.mark.parametrize('bigendian', [False, True])
def test_bayer16(pattern, bigendian):
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[:] = SCENES['orange']
    wide = (mosaic(rgb, pattern).astype(np.uint16) << 8) | 0x7F
    data = wide.astype('>u2' if bigendian else '<u2').tobytes()
    out = image_to_rgb(make_image(data, 16, 16, f'bayer_{pattern}16', 32, bigendian))
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


# --- step padding ------------------------------------------------------------------------------

def encoded(encoding) -> np.ndarray:
    """Return the smooth picture in an encoding, as an HxW or HxWxC array."""
    rgb = pairwise_rgb()
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgra8':
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    if encoding == 'mono16':
        return (rgb[:, :, 1].astype('<u2') << 8) | 0x11
    if encoding == 'yuyv':
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUYV)
    if encoding == 'bayer_grbg8':
        return mosaic(rgb, 'grbg')
    raise AssertionError(encoding)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgra8', 'mono16', 'yuyv', 'bayer_grbg8'])
@pytest.mark.parametrize('pad', [1, 7, 64])
def test_padded_rows_give_the_same_picture(encoding, pad):
    if encoding == 'yuyv' and not hasattr(cv2, 'COLOR_RGB2YUV_YUYV'):
        pytest.skip('no COLOR_RGB2YUV_YUYV in this OpenCV')
    arr = encoded(encoding)
    tight = image_to_rgb(msg_from_array(arr, encoding))
    padded_msg = msg_from_array(arr, encoding, pad=pad)
    assert padded_msg.step == arr.nbytes // H + pad
    np.testing.assert_array_equal(image_to_rgb(padded_msg), tight)


def test_padded_rgb8_is_still_a_view():
    msg = msg_from_array(smooth_rgb(), 'rgb8', pad=5)
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, smooth_rgb())
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_nv12_padding():
    rgb = pairwise_rgb()
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y, u, v = i420[:H * W], i420[H * W:H * W * 5 // 4], i420[H * W * 5 // 4:]
    planes = np.concatenate([y.reshape(H, W), np.stack([u, v], 1).reshape(H // 2, W)])
    tight = image_to_rgb(make_image(planes.tobytes(), H, W, 'nv12', W))
    data, step = padded_rows(planes, pad=9)
    np.testing.assert_array_equal(image_to_rgb(make_image(data, H, W, 'nv12', step)), tight)


def test_data_longer_than_step_times_height_is_accepted():
    rgb = smooth_rgb()
    msg = make_image(rgb.tobytes() + b'\0' * 100, H, W, 'rgb8', 3 * W)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_encoding_names_are_case_and_space_tolerant():
    rgb = smooth_rgb()
    msg = msg_from_array(rgb, ' RGB8 ')
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


# --- other message objects ---------------------------------------------------------------------

def test_duck_typed_message_with_numpy_data_like_rosbags():
    rgb = smooth_rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    msg = types.SimpleNamespace(height=H, width=W, encoding='bgr8', is_bigendian=0,
                                step=3 * W, data=bgr.reshape(-1))
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_duck_typed_message_with_list_data():
    msg = types.SimpleNamespace(height=1, width=2, encoding='mono8', is_bigendian=False,
                                step=2, data=[10, 200])
    np.testing.assert_array_equal(image_to_rgb(msg), [[[10] * 3, [200] * 3]])


def test_module_does_not_import_rclpy():
    code = ('import sys, qwen_vl_ros.image_msg; '
            'sys.exit(1 if "rclpy" in sys.modules else 0)')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


# --- errors ------------------------------------------------------------------------------------

def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_image_error_is_a_vlm_error():
    assert issubclass(ImageError, VLMError)
    assert image_msg.ImageError is ImageError


def test_unsupported_encoding_names_the_supported_ones():
    msg = make_image(b'\0' * (4 * 4 * 4), 4, 4, '32FC1', 16)
    text = error_of(image_to_rgb, msg)
    assert "'32FC1'" in text and 'rgb8' in text and 'bayer_rggb8' in text and 'yuv422' in text
    assert set(SUPPORTED_ENCODINGS) >= {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16',
                                        'yuv422', 'yuv422_yuy2', 'uyvy', 'yuyv',
                                        'bayer_rggb8', 'bayer_bggr16'}


def test_step_smaller_than_a_row():
    text = error_of(image_to_rgb, make_image(b'\0' * 1000, 10, 10, 'rgb8', 29))
    assert 'step 29' in text and '30' in text


def test_data_shorter_than_step_times_height():
    text = error_of(image_to_rgb, make_image(b'\0' * 299, 10, 10, 'rgb8', 30))
    assert '299 bytes' in text and '300' in text


def test_nv12_data_must_hold_the_chroma_rows():
    text = error_of(image_to_rgb, make_image(b'\0' * 100, 10, 10, 'nv12', 10))
    assert '150' in text


def test_empty_image():
    text = error_of(image_to_rgb, make_image(b'', 0, 0, 'rgb8', 0))
    assert 'empty' in text


@pytest.mark.parametrize('encoding', ['yuv422', 'yuyv', 'nv12'])
def test_yuv_needs_an_even_width(encoding):
    assert 'even width' in error_of(image_to_rgb, make_image(b'\0' * 600, 10, 5, encoding, 10))


def test_frame_over_max_pixels_says_both_numbers():
    msg = msg_from_array(smooth_rgb(), 'rgb8')
    text = error_of(image_to_rgb, msg, max_pixels=1000)
    assert str(H * W) in text and '1000' in text
    assert image_to_rgb(msg, max_pixels=H * W).shape == (H, W, 3)
    assert image_to_rgb(msg, max_pixels=0).shape == (H, W, 3)


def test_bad_data_type():
    msg = types.SimpleNamespace(height=1, width=2, encoding='mono8', is_bigendian=False,
                                step=2, data=['a', 'b'])
    assert 'data' in error_of(image_to_rgb, msg)


# --- compressed --------------------------------------------------------------------------------

def compressed(data: bytes, fmt='jpeg'):
    msg = CompressedImage()
    msg.header.frame_id = 'camera'
    msg.format = fmt
    msg.data = data
    return msg


def jpeg_bytes(rgb, quality=95):
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png_bytes(rgb):
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize('fmt', ['jpeg', 'rgb8; jpeg compressed bgr8'])
def test_jpeg(fmt):
    rgb = smooth_rgb()
    out = compressed_to_rgb(compressed(jpeg_bytes(rgb), fmt))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    # the same colours, not swapped
    assert np.abs(out[..., 0].astype(int) - rgb[..., 0]).mean() < 3.0


def test_png_is_exact():
    rgb = smooth_rgb()
    np.testing.assert_array_equal(compressed_to_rgb(compressed(png_bytes(rgb), 'png')), rgb)


def test_header_size():
    rgb = smooth_rgb(30, 50)
    assert image_msg.compressed_size(jpeg_bytes(rgb)) == (50, 30)
    assert image_msg.compressed_size(png_bytes(rgb)) == (50, 30)
    assert image_msg.compressed_size(b'GIF89a....') is None


@pytest.mark.parametrize('encode', [jpeg_bytes, png_bytes])
def test_compressed_over_max_pixels_is_refused_before_decoding(encode, monkeypatch):
    data = encode(smooth_rgb())

    def no_decode(*args):
        raise AssertionError('decoded although the header says the frame is too large')

    monkeypatch.setattr(image_msg.cv2, 'imdecode', no_decode)
    text = error_of(compressed_to_rgb, compressed(data), max_pixels=100)
    assert str(H * W) in text and '100' in text


def test_truncated_jpeg():
    data = jpeg_bytes(smooth_rgb())
    text = error_of(compressed_to_rgb, compressed(data[:len(data) * 2 // 3]))
    assert 'truncated' in text.lower()
    assert 'JPEG' in error_of(compressed_to_rgb, compressed(data[:40]))


def test_jpeg_with_trailing_bytes_after_the_end_marker_is_fine():
    data = jpeg_bytes(smooth_rgb()) + b'\0' * 16
    assert compressed_to_rgb(compressed(data)).shape == (H, W, 3)


def test_corrupt_jpeg_header():
    data = bytearray(jpeg_bytes(smooth_rgb()))
    data[2:6] = b'\x12\x34\x56\x78'  # the first marker is no marker any more
    assert 'JPEG' in error_of(compressed_to_rgb, compressed(bytes(data)))


def test_truncated_png():
    data = png_bytes(smooth_rgb())
    assert 'PNG' in error_of(compressed_to_rgb, compressed(data[:len(data) // 2], 'png'))


def test_garbage_is_refused():
    text = error_of(compressed_to_rgb, compressed(b'this is not an image at all', 'jpeg'))
    assert 'decode' in text


def test_empty_compressed_image():
    assert 'empty' in error_of(compressed_to_rgb, compressed(b''))


def test_compressed_depth_is_refused():
    text = error_of(compressed_to_rgb, compressed(png_bytes(smooth_rgb()),
                                                 '16UC1; compressedDepth png'))
    assert 'depth' in text
