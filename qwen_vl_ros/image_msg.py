"""sensor_msgs Image and CompressedImage -> HxWx3 uint8 RGB numpy arrays, without ROS.

Takes any object with the fields of the messages (duck typing), so it runs on rclpy messages,
rosbags messages and plain test objects alike; it never imports rclpy.

- ``image_to_rgb(msg)``: ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``.
  Encodings (names of sensor_msgs/image_encodings.hpp): rgb8, bgr8, rgba8, bgra8, rgb16, bgr16,
  rgba16, bgra16, mono8, mono16, uyvy (= yuv422), yuyv (= yuv422_yuy2), nv12, nv21 and the Bayer
  patterns bayer_rggb8/bggr8/gbrg8/grbg8 and their 16-bit variants. 16-bit data (read in the
  byte order that ``is_bigendian`` says) is reduced to 8 bit by ``bit_depth`` (see to_8bit).
- ``compressed_to_rgb(msg)``: ``format``, ``data``; JPEG and PNG (and what else OpenCV decodes),
  8 or 16 bit, with the channel order image_transport's format string gives (see
  decode_compressed). The size is read from the JPEG / PNG header before anything is decoded.
- ``decode_compressed(data, fmt)``: the same for bytes (image files: ``qwen-vl-describe --image``
  takes the same decision on the same bytes as the node).

Rows may be padded (``step`` > width * bytes per pixel). The data is wrapped with np.frombuffer,
never copied to bytes first: an rgb8 (or rgba8) frame comes back as a view into ``msg.data``
(read-only when the data is ``bytes``); other encodings cost one conversion into a new array.
Every problem raises ImageError with a message that says what is wrong.
"""
import cv2
import numpy as np

from .vlm.errors import ImageError

# encoding -> (bytes per pixel, kind). The kinds are converted in _convert.
_ENCODINGS = {
    'rgb8': (3, 'rgb'),
    'bgr8': (3, 'bgr'),
    'rgba8': (4, 'rgba'),
    'bgra8': (4, 'bgra'),
    'rgb16': (6, 'rgb'),
    'bgr16': (6, 'bgr'),
    'rgba16': (8, 'rgba'),
    'bgra16': (8, 'bgra'),
    'mono8': (1, 'mono'),
    'mono16': (2, 'mono'),
    # ROS: 'yuv422' is UYVY and 'yuv422_yuy2' is YUYV (both names deprecated in favour of fourcc).
    'uyvy': (2, 'uyvy'),
    'yuv422': (2, 'uyvy'),
    'yuyv': (2, 'yuyv'),
    'yuv422_yuy2': (2, 'yuyv'),
    # 4:2:0 semi-planar: a full-size Y plane of `step` bytes per row, then height/2 rows of
    # interleaved chroma (UV for nv12, VU for nv21).
    'nv12': (1, 'nv12'),
    'nv21': (1, 'nv21'),
}
# ROS names a Bayer pattern by its top-left 2x2 block; OpenCV's BayerXY codes name the second
# row's second and third pixels, so ROS rggb is OpenCV BayerBG (as in cv_bridge). The tests
# check it with a pure red, green and blue scene.
_BAYER_CODES = {
    'rggb': cv2.COLOR_BayerBG2RGB,
    'bggr': cv2.COLOR_BayerRG2RGB,
    'gbrg': cv2.COLOR_BayerGR2RGB,
    'grbg': cv2.COLOR_BayerGB2RGB,
}
for _pattern in _BAYER_CODES:
    _ENCODINGS[f'bayer_{_pattern}8'] = (1, 'bayer_' + _pattern)
    _ENCODINGS[f'bayer_{_pattern}16'] = (2, 'bayer_' + _pattern)
del _pattern

SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

_JPEG_SOI = b'\xff\xd8'
_JPEG_EOI = b'\xff\xd9'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Start-of-frame markers (they carry the image size): C0-CF except DHT C4, JPG C8, DAC CC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_to_rgb(msg, max_pixels=None, bit_depth: int = 0) -> np.ndarray:
    """Convert a sensor_msgs/Image-like message to an HxWx3 uint8 RGB array.

    ``max_pixels``: refuse frames with more pixels than this (None or 0: no limit); checked
    before any pixel is touched. ``bit_depth``: how 16-bit encodings become 8 bit (to_8bit).
    The result may share memory with ``msg.data`` (see the module docstring): copy it before
    writing into it.
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in _ENCODINGS:
        raise ImageError(f'unsupported image encoding {msg.encoding!r}; supported: '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')
    bpp, kind = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError(f'empty image: {width}x{height} pixels ({encoding})')
    _check_pixels(width, height, max_pixels)
    if step < width * bpp:
        raise ImageError(f'step {step} is smaller than width {width} x {bpp} bytes per pixel = '
                         f'{width * bpp} bytes for encoding {encoding}')
    if kind in ('uyvy', 'yuyv', 'nv12', 'nv21') and width % 2:
        raise ImageError(f'{encoding} needs an even width, got {width}')
    rows_total = height
    if kind in ('nv12', 'nv21'):
        if height % 2:
            raise ImageError(f'{encoding} needs an even height, got {height}')
        rows_total = height * 3 // 2
    buf = _byte_view(msg.data)
    if buf.size < step * rows_total:
        need = f'step x height = {step} x {height}'
        if rows_total != height:
            need = f'step x height x 1.5 = {step} x {height} x 1.5'
        raise ImageError(f'image data has {buf.size} bytes, expected {need} = '
                         f'{step * rows_total} bytes for a {width}x{height} {encoding} image')
    # Rows without their padding: a (rows, width * bpp) view, no copy.
    rows = buf[:step * rows_total].reshape(rows_total, step)[:, :width * bpp]
    if bpp in (2, 6, 8) and kind not in ('uyvy', 'yuyv'):
        # 16 bits per channel -> 8 by bit_depth (one conversion into a new array)
        words = np.ascontiguousarray(rows).view('>u2' if msg.is_bigendian else '<u2')
        rows = to_8bit(words, bit_depth)
    return _convert(kind, rows, height, width)


def check_bit_depth(bit_depth: int) -> int:
    """Return ``bit_depth`` as an int; ImageError unless it is 0 (auto) or 8..16."""
    bit_depth = int(bit_depth)
    if bit_depth != 0 and not 8 <= bit_depth <= 16:
        raise ImageError(f'bit_depth must be 0 (auto) or 8..16, got {bit_depth}')
    return bit_depth


def to_8bit(words: np.ndarray, bit_depth: int = 0) -> np.ndarray:
    """uint16 samples holding ``bit_depth``-bit values -> uint8, by a right shift.

    A value v of an N-bit sensor becomes min(255, v >> (N - 8)): 12-bit data (0..4095) fills
    0..255 instead of 0..15, and N = 16 keeps the high byte (cv_bridge's 16 -> 8 bit rule).
    ``bit_depth`` 0 = auto: N is the bit length of the frame's brightest value, at least 8
    (a 12-bit camera's frame whose brightest pixel is 4095 gives N = 12; a dark 16-bit frame
    comes out brighter, by a power of two). ROS image messages carry no bit depth
    (sensor_msgs/Image: "mono16" says only the container), hence the parameter. Same shape.
    """
    bits = check_bit_depth(bit_depth)
    if bits == 0:
        bits = max(8, int(words.max()).bit_length()) if words.size else 16
    shift = bits - 8
    out = words >> shift if shift else words.copy()
    if bits < 16:   # values above 2**bits - 1 saturate instead of wrapping
        np.minimum(out, 255, out=out)
    return out.astype(np.uint8)


def _convert(kind: str, rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Turn (rows, width * channels) uint8 rows of one kind of layout into HxWx3 RGB."""
    if kind == 'mono':
        return cv2.cvtColor(np.ascontiguousarray(rows), cv2.COLOR_GRAY2RGB)
    if kind.startswith('bayer_'):
        return cv2.cvtColor(np.ascontiguousarray(rows), _BAYER_CODES[kind[6:]])
    if kind in ('nv12', 'nv21'):
        code = cv2.COLOR_YUV2RGB_NV12 if kind == 'nv12' else cv2.COLOR_YUV2RGB_NV21
        return cv2.cvtColor(np.ascontiguousarray(rows), code)
    if kind in ('uyvy', 'yuyv'):
        code = cv2.COLOR_YUV2RGB_UYVY if kind == 'uyvy' else cv2.COLOR_YUV2RGB_YUYV
        return cv2.cvtColor(np.ascontiguousarray(rows.reshape(height, width, 2)), code)
    channels = 4 if kind in ('rgba', 'bgra') else 3
    pixels = rows.reshape(height, width, channels)
    if kind in ('rgb', 'rgba'):
        return pixels[:, :, :3]  # a view: no copy for rgb8 / rgba8
    if kind == 'bgr':
        # A channel-reversed view, no copy: the core resizes it in BGR order and reverses only
        # the small result (vision.fit_frame), instead of copying a whole 1080p frame here.
        return pixels[:, :, ::-1]
    # bgra: one copy, reordered by OpenCV (a reversed-stride numpy copy of a 1080p frame takes
    # ~5 ms, cvtColor ~0.1 ms; the bytes are the same)
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGRA2RGB)


def compressed_to_rgb(msg, max_pixels=None, bit_depth: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage-like message (JPEG, PNG) to HxWx3 uint8 RGB.

    ``msg.format`` is read by image_transport's rules (decode_compressed). Raises ImageError.
    """
    fmt = str(getattr(msg, 'format', '') or '')
    return decode_compressed(msg.data, fmt, max_pixels, bit_depth)


def parse_format(fmt: str) -> tuple:
    """Read a CompressedImage ``format``: (original encoding or '', channel order of the data).

    compressed_image_transport writes ``"<encoding>; <jpeg|png> compressed <target>"``: the
    publisher's encoding, then what it encoded (bgr8/bgr16 for colour images, nothing for mono
    and Bayer: the single channel as it was). Its subscriber (compressed_subscriber.cpp) takes
    the decoded channels as BGR when the rest contains "compressed bgr", as RGB otherwise for a
    colour encoding (e.g. "rgb8; jpeg compressed rgb8"), and as BGR for a format without ';'
    (older publishers: "jpeg", "png"; and image files). The order returned is 'bgr' or 'rgb'.
    compressedDepth (compressed_depth_image_transport: depth in metres or millimetres, not a
    picture) raises ImageError.
    """
    text = fmt.strip()
    if 'compresseddepth' in text.lower().replace(' ', ''):
        raise ImageError(f'compressedDepth images ({fmt!r}) are depth maps (16UC1 / 32FC1 '
                         'distances from compressed_depth_image_transport), not camera '
                         'pictures: subscribe to a colour or mono image topic')
    encoding, sep, rest = text.partition(';')
    if not sep:
        return '', 'bgr'
    encoding = encoding.strip().lower()
    colour = encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16', 'rgba16',
                          'bgra16')
    if colour and 'compressed bgr' not in ' '.join(rest.lower().split()):
        return encoding, 'rgb'
    return encoding, 'bgr'


def decode_compressed(data, fmt: str = '', max_pixels=None, bit_depth: int = 0) -> np.ndarray:
    """Decode compressed image bytes (JPEG, PNG, ... as OpenCV reads) to HxWx3 uint8 RGB.

    ``fmt``: a CompressedImage format string (parse_format; '' for an image file). The pixel
    count is read from the JPEG / PNG header and checked against ``max_pixels`` (None or 0: no
    limit) before decoding; other formats are checked after. Truncated JPEG and PNG data is
    refused instead of decoded to a partly grey picture; bytes after the end of the image
    (JPEG EOI, PNG IEND: motion photos append a video there) are ignored, as decoders do.
    Decoded like image_transport (cv::IMREAD_UNCHANGED): 16-bit data (PNG, TIFF) is reduced by
    ``bit_depth`` (to_8bit), one channel is grey (or a Bayer mosaic when the original encoding
    says bayer_*), an alpha channel is dropped. Raises ImageError.
    """
    encoding, order = parse_format(fmt)
    check_bit_depth(bit_depth)
    buf = _byte_view(data)
    if buf.size == 0:
        raise ImageError(f'empty compressed image (format {fmt!r})')
    size = compressed_size(buf)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        image = None
        why = ' '.join(str(e).split())
    else:
        why = 'corrupt data or a format OpenCV does not read'
    if image is None or image.size == 0:
        raise ImageError(f'cannot decode the compressed image (format {fmt!r}, {buf.size} '
                         f'bytes): {why}')
    if size is None:
        _check_pixels(image.shape[1], image.shape[0], max_pixels)
    if image.dtype == np.uint16:
        image = to_8bit(image, bit_depth)
    elif image.dtype != np.uint8:
        raise ImageError(f'compressed image of {image.dtype} samples (format {fmt!r}): only 8- '
                         'and 16-bit images are supported')
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        gray = image.reshape(image.shape[0], image.shape[1])
        if encoding.startswith('bayer_') and encoding[6:10] in _BAYER_CODES:
            return cv2.cvtColor(gray, _BAYER_CODES[encoding[6:10]])
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return image if order == 'rgb' else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if order == 'rgb' else cv2.COLOR_BGRA2RGB)
    raise ImageError(f'compressed image with {channels} channels (format {fmt!r})')


def compressed_size(data) -> tuple | None:
    """Return (width, height) from a JPEG or PNG header, None for other formats.

    Raises ImageError for JPEG / PNG data that is truncated or has a broken header.
    """
    buf = _byte_view(data)
    if buf[:2].tobytes() == _JPEG_SOI:
        return _jpeg_size(memoryview(buf))
    if buf[:8].tobytes() == _PNG_SIGNATURE:
        return _png_size(buf)
    return None


def _jpeg_size(data) -> tuple:
    """Walk the JPEG markers to the frame header; check the data ends after the scan."""
    n = len(data)
    i = 2
    size = None
    while True:
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > n or data[i] != 0xFF:
            raise ImageError(f'truncated or corrupt JPEG: no valid marker at byte {i} of {n}')
        marker = data[i + 1]
        if marker == 0xD9:
            raise ImageError('corrupt JPEG: end of image before any scan data')
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2  # markers without a length
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            raise ImageError(f'truncated or corrupt JPEG: segment 0x{marker:02X} at byte {i} '
                             f'runs past the end ({n} bytes)')
        if marker in _JPEG_SOF:
            if length < 7:
                raise ImageError('corrupt JPEG: frame header too short')
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            if width == 0 or height == 0:
                raise ImageError(f'corrupt JPEG: frame header says {width}x{height} pixels')
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to the EOI marker
            if size is None:
                raise ImageError('corrupt JPEG: scan data before the frame header')
            # Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker,
            # so the first end-of-image marker after the scan is the real one; whatever
            # follows it (zeros, a motion photo's video) is not part of the image.
            if bytes(data[i:]).find(_JPEG_EOI) < 0:
                raise ImageError(f'truncated JPEG: no end-of-image marker after the scan data '
                                 f'({n} bytes)')
            return size
        i += 2 + length


def _png_size(buf: np.ndarray) -> tuple:
    """Read the IHDR chunk; walk the chunks to IEND (bytes after it are not the image's)."""
    if buf.size < 33 or buf[12:16].tobytes() != b'IHDR':
        raise ImageError(f'truncated or corrupt PNG: no IHDR chunk ({buf.size} bytes)')
    width = int.from_bytes(buf[16:20].tobytes(), 'big')
    height = int.from_bytes(buf[20:24].tobytes(), 'big')
    if width == 0 or height == 0:
        raise ImageError(f'corrupt PNG: header says {width}x{height} pixels')
    i, n = 8, buf.size
    while i + 12 <= n:   # chunk: length (4, big-endian), type (4), data, CRC (4)
        length = int.from_bytes(buf[i:i + 4].tobytes(), 'big')
        if buf[i + 4:i + 8].tobytes() == b'IEND':
            return width, height
        i += 12 + length
    raise ImageError(f'truncated PNG: no IEND chunk ({buf.size} bytes)')


def _check_pixels(width: int, height: int, max_pixels) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageError(f'frame of {width}x{height} = {width * height} pixels is larger than '
                         f'max_pixels = {int(max_pixels)}')


def _byte_view(data) -> np.ndarray:
    """Return the message data as a flat uint8 array, without copying when it is a buffer."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if hasattr(data, '__len__') and len(data) == 0:
        return np.empty(0, np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        pass
    try:  # a list or tuple of ints (e.g. a message built by hand)
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise ImageError(f'image data must be bytes or uint8 values, got '
                         f'{type(data).__name__}: {e}') from None
