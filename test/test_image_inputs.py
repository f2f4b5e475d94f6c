"""Camera data as it comes from the field, by kind (issue 9, items 1-3).

1. Bytes after the end of a compressed image (motion photos append a video; some drivers pad):
   accepted by every entry point alike (topic, node frame store, --image file, --bag).
2. CompressedImage ``format`` read by image_transport's rules: the channel order of the data
   ("... compressed rgb8" vs "... compressed bgr8"), mono and Bayer originals, 16-bit PNG,
   compressedDepth refused with its reason.
3. 16-bit containers holding fewer bits (12-bit mono16 / bayer_*16 / rgb16, 16-bit PNG): scaled
   by ``bit_depth`` (0 = auto) so that the picture is visible.

Expected pictures are built here with numpy / OpenCV forward operations, never by the code
under test.
"""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from qwen_vl_ros.cli.describe import read_rgb
from qwen_vl_ros.image_msg import compressed_to_rgb, decode_compressed, image_to_rgb, to_8bit
from qwen_vl_ros.ros.frames import Source, convert_all
from qwen_vl_ros.vlm.errors import ImageError

H, W = 48, 64
RED = (230, 20, 20)


def picture(h=H, w=W):
    """Make a smooth colourful RGB picture with a pure red block (colour swaps show at once)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([40 + 170 * x / (w - 1), 30 + 180 * y / (h - 1),
                    np.full_like(x, 120)], axis=2).round().astype(np.uint8)
    rgb[4:20, 4:24] = RED
    return rgb


def encode(ext, mat, *params):
    ok, buf = cv2.imencode(ext, mat, list(params))
    assert ok
    return buf.tobytes()


def jpeg_of_rgb(rgb):
    """Encode a JPEG as OpenCV writes a BGR mat (what compressed_image_transport publishes)."""
    return encode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), cv2.IMWRITE_JPEG_QUALITY, 95)


def png_of_rgb(rgb):
    return encode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def cmsg(data: bytes, fmt='jpeg'):
    msg = CompressedImage()
    msg.header.frame_id = 'camera'
    msg.format = fmt
    msg.data = data
    return msg


def close(a, b, tol=4.0):
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < tol


def decisions(data: bytes, tmp_path, name='f'):
    """Decode ``data`` through every entry point; each gives an array or the ImageError text."""
    path = tmp_path / name
    path.write_bytes(data)
    out = {}
    for where, fn in (
            ('topic', lambda: compressed_to_rgb(cmsg(data, 'rgb8; jpeg compressed bgr8'))),
            ('frame store', lambda: convert_all([Source(cmsg(data), True, True)], 0)[0]),
            ('--image', lambda: read_rgb(str(path)))):
        try:
            out[where] = fn()
        except ImageError as e:
            out[where] = str(e)
    return out


# --- 1. bytes after the end of the image ---------------------------------------------------------

@pytest.mark.parametrize('extra', [1, 16, 4096, 65534, 65535, 65536, 100_000, 300_000])
@pytest.mark.parametrize('kind', ['jpeg', 'png'])
def test_trailing_zero_bytes_are_ignored_everywhere(kind, extra, tmp_path):
    rgb = picture(480, 640)
    data = jpeg_of_rgb(rgb) if kind == 'jpeg' else png_of_rgb(rgb)
    clean = decode_compressed(data)
    for where, got in decisions(data + b'\0' * extra, tmp_path).items():
        assert not isinstance(got, str), f'{where}: {got}'
        np.testing.assert_array_equal(got, clean, err_msg=where)


@pytest.mark.parametrize('kind', ['jpeg', 'png'])
def test_a_motion_photo_video_after_the_image_is_ignored(kind, tmp_path):
    """A Google/Samsung motion photo: the JPEG, then an MP4 (random bytes, markers and all)."""
    rng = np.random.default_rng(3)
    video = b'\0\0\0\x18ftypmp42' + rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    video += b'\xff\xd9IEND' * 3  # end markers inside the appended data must not confuse it
    rgb = picture(240, 320)
    data = jpeg_of_rgb(rgb) if kind == 'jpeg' else png_of_rgb(rgb)
    clean = decode_compressed(data)
    for where, got in decisions(data + video, tmp_path).items():
        assert not isinstance(got, str), f'{where}: {got}'
        np.testing.assert_array_equal(got, clean, err_msg=where)


@pytest.mark.parametrize('kind', ['jpeg', 'png'])
@pytest.mark.parametrize('keep', [0.3, 0.7, 0.98])
def test_truncated_images_are_refused_everywhere(kind, keep, tmp_path):
    rgb = picture(240, 320)
    data = jpeg_of_rgb(rgb) if kind == 'jpeg' else png_of_rgb(rgb)
    cut = data[:int(len(data) * keep)]
    for padded in (cut, cut + b'\0' * 70_000):  # zeros do not make a truncated image whole
        got = decisions(padded, tmp_path)
        for where, text in got.items():
            assert isinstance(text, str), f'{where} accepted a truncated {kind}'
            assert 'truncated' in text.lower() and kind.upper() in text, (where, text)


def test_bag_entry_point_takes_the_same_decision(tmp_path, tiny_onnx_dir, capsys):
    """qwen-vl-describe --bag on a bag of good / padded / truncated JPEG and PNG frames."""
    import json

    from qwen_vl_ros.bagtools import COMPRESSED_IMAGE, compressed_message, typestore, write_bag
    from qwen_vl_ros.cli.describe import main as describe_main
    rgb = picture(120, 160)
    jpeg, png = jpeg_of_rgb(rgb), png_of_rgb(rgb)
    variants = [('jpeg', jpeg), ('jpeg', jpeg + b'\0' * 100_000), ('png', png + b'\0' * 4096),
                ('jpeg', jpeg[:len(jpeg) // 2]), ('png', png[:len(png) // 2] + b'\0' * 4096)]
    store = typestore()
    start = 1_700_000_000_000_000_000
    messages = [('/cam/compressed', COMPRESSED_IMAGE, start + i * 10**8,
                 compressed_message(store, None, start + i * 10**8, fmt=fmt, data=data))
                for i, (fmt, data) in enumerate(variants)]
    write_bag(tmp_path / 'bag', messages, store=store)
    out = tmp_path / 'out.jsonl'
    code = describe_main(['--model-dir', str(tiny_onnx_dir), '--bag', str(tmp_path / 'bag'),
                          '--every', '0', '--out', str(out), '--greedy',
                          '--max-new-tokens', '2'])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    bag_ok = ['error' not in d for d in lines]
    direct_ok = [not isinstance(decisions(data, tmp_path)['--image'], str)
                 for _, data in variants]
    assert bag_ok == direct_ok == [True, True, True, False, False]
    assert all('truncated' in d['error'] for d in lines[3:])


# --- 2. the format string ------------------------------------------------------------------------

def red_block(rgb):
    return rgb[8:16, 8:20].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize('fmt', ['rgb8; jpeg compressed rgb8', 'rgba8; jpeg compressed rgb8',
                                 'bgr8; jpeg compressed rgb8', 'RGB8 ; JPEG  compressed RGB8'])
def test_rgb_ordered_jpeg_keeps_its_colours(fmt):
    """Published from an RGB mat (the target says rgb8): the decoded channels are RGB."""
    rgb = picture()
    data = encode('.jpg', rgb, cv2.IMWRITE_JPEG_QUALITY, 95)  # the RGB bytes as they are
    out = compressed_to_rgb(cmsg(data, fmt))
    assert close(out, rgb), fmt
    r, g, b = red_block(out)
    assert r > 200 and b < 60, f'{fmt}: red came out as {red_block(out)}'


@pytest.mark.parametrize('fmt', ['jpeg', 'png', '', 'rgb8; jpeg compressed bgr8',
                                 'bgr8; jpeg compressed bgr8', 'bgra8; jpeg compressed bgr8',
                                 'rgba8; png compressed bgr8', 'mono8; jpeg compressed bgr8'])
def test_bgr_ordered_data_keeps_its_colours(fmt):
    """The usual publisher (a BGR mat) and formats without ';' (older publishers, files)."""
    rgb = picture()
    data = png_of_rgb(rgb) if 'png' in fmt else jpeg_of_rgb(rgb)
    out = compressed_to_rgb(cmsg(data, fmt))
    assert close(out, rgb), fmt
    assert red_block(out)[0] > 200 and red_block(out)[2] < 60


@pytest.mark.parametrize('fmt', ['mono8; jpeg compressed ', 'mono8; png compressed ', 'jpeg'])
def test_mono_compressed(fmt):
    gray = cv2.cvtColor(picture(), cv2.COLOR_RGB2GRAY)
    data = encode('.png' if 'png' in fmt else '.jpg', gray)
    out = compressed_to_rgb(cmsg(data, fmt))
    assert close(out, np.repeat(gray[:, :, None], 3, axis=2))


@pytest.mark.parametrize('pattern, code', [('rggb', cv2.COLOR_BayerBG2RGB),
                                           ('gbrg', cv2.COLOR_BayerGR2RGB)])
def test_bayer_original_is_demosaiced(pattern, code):
    """compressed_image_transport encodes a Bayer image as its single-channel mosaic."""
    scene = np.empty((16, 16, 3), np.uint8)
    scene[:] = (200, 120, 30)
    mosaic = np.empty((16, 16), np.uint8)
    for i, c in enumerate(pattern):   # the top-left 2x2 block, in ROS's naming
        dy, dx = divmod(i, 2)
        mosaic[dy::2, dx::2] = scene[dy::2, dx::2, 'rgb'.index(c)]
    out = compressed_to_rgb(cmsg(encode('.png', mosaic), f'bayer_{pattern}8; png compressed '))
    np.testing.assert_array_equal(out[2:-2, 2:-2], scene[2:-2, 2:-2])
    np.testing.assert_array_equal(out, cv2.cvtColor(mosaic, code))


def test_rgba_png_file_drops_alpha(tmp_path):
    rgb = picture()
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    bgra[:, :, 3] = 7
    path = tmp_path / 'a.png'
    path.write_bytes(encode('.png', bgra))
    np.testing.assert_array_equal(read_rgb(str(path)), rgb)
    np.testing.assert_array_equal(compressed_to_rgb(cmsg(path.read_bytes(), 'png')), rgb)


@pytest.mark.parametrize('fmt', ['16UC1; compressedDepth png', '32FC1; compressedDepth',
                                 '16UC1; compressedDepth rvl', 'compressedDepth'])
def test_compressed_depth_is_refused_with_its_reason(fmt):
    depth = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 3)
    with pytest.raises(ImageError) as e:
        compressed_to_rgb(cmsg(b'\0' * 12 + encode('.png', depth), fmt))
    text = str(e.value)
    assert 'compressedDepth' in text and 'depth' in text and 'not camera pictures' in text


# --- 3. bit depth -------------------------------------------------------------------------------

def twelve_bit(h=H, w=W, seed=0):
    """Return 12-bit mono data 0..4095 (brightest pixel 4095) and its 8-bit picture."""
    v = np.random.default_rng(seed).integers(0, 4096, (h, w)).astype(np.uint16)
    v[0, 0] = 4095
    return v, (v >> 4).astype(np.uint8)


def raw(arr: np.ndarray, encoding: str, bigendian=False):
    msg = Image()
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = bigendian
    data = np.ascontiguousarray(arr).astype('>u2' if bigendian else '<u2')
    msg.step = data.strides[0]
    msg.data = data.tobytes()
    return msg


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('bit_depth', [0, 12])
def test_mono16_with_12_bit_data_is_visible(bit_depth, bigendian):
    v, want = twelve_bit()
    out = image_to_rgb(raw(v, 'mono16', bigendian), bit_depth=bit_depth)
    np.testing.assert_array_equal(out, np.repeat(want[:, :, None], 3, axis=2))
    assert out.max() == 255


def test_bit_depth_16_keeps_the_high_byte_and_smaller_depths_saturate():
    v, _ = twelve_bit()
    out16 = image_to_rgb(raw(v, 'mono16'), bit_depth=16)[:, :, 0]
    np.testing.assert_array_equal(out16, (v >> 8).astype(np.uint8))
    assert out16.max() == 15      # what users saw before: nearly black
    out10 = image_to_rgb(raw(v, 'mono16'), bit_depth=10)[:, :, 0]
    np.testing.assert_array_equal(out10, np.minimum(v >> 2, 255).astype(np.uint8))


@pytest.mark.parametrize('top, shift', [(255, 0), (700, 2), (1023, 2), (4095, 4), (16383, 6),
                                        (65535, 8)])
def test_auto_bit_depth_follows_the_brightest_value(top, shift):
    v = np.linspace(0, top, H * W).round().astype(np.uint16).reshape(H, W)
    out = image_to_rgb(raw(v, 'mono16'))[:, :, 0]
    np.testing.assert_array_equal(out, (v >> shift).astype(np.uint8))


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('bit_depth', [0, 12])
def test_bayer16_with_12_bit_data(pattern, bit_depth):
    scene = np.array([200, 120, 30], np.uint16)          # 8-bit colour ...
    mosaic = np.empty((16, 16), np.uint16)
    for i, c in enumerate(pattern):
        dy, dx = divmod(i, 2)
        mosaic[dy::2, dx::2] = (scene['rgb'.index(c)] << 4) | 0xF   # ... as 12-bit samples
    out = image_to_rgb(raw(mosaic, f'bayer_{pattern}16'), bit_depth=bit_depth)
    want = np.broadcast_to(scene.astype(np.uint8), (12, 12, 3))
    np.testing.assert_array_equal(out[2:-2, 2:-2], want)


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16'])
def test_colour16_with_12_bit_data(encoding):
    rgb = picture()
    src = rgb if encoding == 'rgb16' else rgb[:, :, ::-1]
    wide = src.astype(np.uint16) << 4
    np.testing.assert_array_equal(image_to_rgb(raw(wide, encoding), bit_depth=12), rgb)
    np.testing.assert_array_equal(image_to_rgb(raw(wide, encoding)), rgb)


@pytest.mark.parametrize('fmt', ['mono16; png compressed ', 'png'])
def test_16_bit_png_follows_bit_depth(fmt, tmp_path):
    v, want = twelve_bit()
    data = encode('.png', v)
    want3 = np.repeat(want[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(compressed_to_rgb(cmsg(data, fmt)), want3)
    np.testing.assert_array_equal(compressed_to_rgb(cmsg(data, fmt), bit_depth=12), want3)
    np.testing.assert_array_equal(compressed_to_rgb(cmsg(data, fmt), bit_depth=16)[:, :, 0],
                                  (v >> 8).astype(np.uint8))
    path = tmp_path / 'depth12.png'
    path.write_bytes(data)
    np.testing.assert_array_equal(read_rgb(str(path)), want3)


def test_16_bit_colour_png():
    rgb = picture()
    bgr16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) << 4
    out = compressed_to_rgb(cmsg(encode('.png', bgr16), 'rgb16; png compressed bgr16'))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('bad', [1, 7, 17, -1])
def test_bad_bit_depth_is_an_image_error(bad):
    with pytest.raises(ImageError, match='bit_depth'):
        to_8bit(np.zeros(4, np.uint16), bad)


def test_node_parameter_bit_depth():
    from qwen_vl_ros.ros.params import SPEC_BY_NAME
    spec = SPEC_BY_NAME['bit_depth']
    assert spec.default == 0 and not spec.read_only
    assert spec.check(12) is None and spec.check(0) is None and spec.check(16) is None
    assert 'bit_depth' in spec.check(4)
    assert spec.check(17)
