"""Bench 2: a 1920x1080 bgr8 camera frame to the vision model's patch tensor.

    python bench/frame_patches.py [--rounds 60]

Pipeline: qwen_vl_ros.image_msg.image_to_rgb(msg) -> vision.fit_frame(rgb, (448, 448)) ->
vision.frames_to_patches -> uint8 (1, 1024, 392, 3), what the node does per request.
Demo (AXERA's python/infer.py): a PIL image resized to 448x448 (PIL's default bicubic), then
transformers' Qwen2VLImageProcessor (do_rescale/do_normalize off: the compiled model normalises)
-> pixel_values (1024, 1176). The message reaches PIL through PIL's own raw 'BGR' decoder
(Image.frombuffer), the cheapest way in; the numpy way (reverse the channels, fromarray) is
timed too. Same frame, same process, interleaved rounds; medians.

Also reported: how far the two patch tensors are apart (mean absolute difference in grey
levels; they differ only in the resize filter).

Target: the pipeline at least 20x faster than the demo.
"""

from __future__ import annotations

import array
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_parser, demo_image_bgr, machine, machine_line, median, percentile, timed, verdict,
    write_result)

from qwen_vl_ros.image_msg import image_to_rgb  # noqa: E402
from qwen_vl_ros.vlm.vision import fit_frame, frames_to_patches  # noqa: E402

W, H, SIZE = 1920, 1080, (448, 448)


def camera_message() -> SimpleNamespace:
    """Make a bgr8 sensor_msgs/Image-like message: the demo photo at 1080p plus noise."""
    bgr = cv2.resize(demo_image_bgr(), (W, H), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 3, bgr.shape)
    bgr = np.clip(bgr + noise, 0, 255).astype(np.uint8)
    # rclpy gives uint8[] fields as array.array('B')
    return SimpleNamespace(height=H, width=W, encoding='bgr8', is_bigendian=0, step=W * 3,
                           data=array.array('B', bgr.tobytes()))


def pipeline(msg) -> np.ndarray:
    """Do what the node does: message -> RGB -> 448x448 -> patches."""
    return frames_to_patches([fit_frame(image_to_rgb(msg), SIZE)])


def demo_processor():
    """Build the demo's image processor (max_pixels 448*448) with Qwen2.5-VL's settings."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    return Qwen2VLImageProcessor(min_pixels=3136, max_pixels=448 * 448, patch_size=14,
                                 temporal_patch_size=2, merge_size=2)


def demo(msg, processor, via_numpy: bool = False) -> np.ndarray:
    """Take the demo's path: PIL resize to 448x448, Qwen2VLImageProcessor -> pixel_values."""
    from PIL import Image
    if via_numpy:
        bgr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        image = Image.fromarray(bgr[:, :, ::-1])
    else:
        image = Image.frombuffer('RGB', (msg.width, msg.height), msg.data, 'raw', 'BGR',
                                 msg.step, 1)
    image = image.resize(SIZE)
    return processor(images=image, do_rescale=False, do_normalize=False,
                     return_tensors='np')['pixel_values']


def main(argv=None) -> int:
    """Time both paths, print the figures, write the JSON result."""
    p = bench_parser(__doc__)
    p.add_argument('--rounds', type=int, default=60)
    args = p.parse_args(argv)
    msg = camera_message()
    proc = demo_processor()

    # Interleaved rounds, so that both paths see the same machine load.
    ours, theirs, theirs_np = [], [], []
    for _ in range(3):
        pipeline(msg), demo(msg, proc), demo(msg, proc, via_numpy=True)
    for r in range(args.rounds):
        ours += timed(lambda: pipeline(msg), 5, warmup=0)
        theirs += timed(lambda: demo(msg, proc), 1, warmup=0)
        if r % 2:
            theirs_np += timed(lambda: demo(msg, proc, via_numpy=True), 1, warmup=0)
    rgb = image_to_rgb(msg)
    fitted = fit_frame(rgb, SIZE)
    steps = {'image_to_rgb': timed(lambda: image_to_rgb(msg), 100),
             'fit_frame': timed(lambda: fit_frame(rgb, SIZE), 100),
             'frames_to_patches': timed(lambda: frames_to_patches([fitted]), 100)}

    patches = pipeline(msg)
    pixel_values = demo(msg, proc)
    mine = patches[0].transpose(0, 2, 1).reshape(pixel_values.shape).astype(np.float32)
    diff = float(np.abs(mine - pixel_values).mean())
    old = frames_to_patches([cv2.resize(image_to_rgb(msg), SIZE[::-1],
                                        interpolation=cv2.INTER_AREA)])
    diff_area = float(np.abs(patches.astype(np.float32) - old).mean())

    m_ours, m_theirs = median(ours), median(theirs)
    speedup = m_theirs / m_ours
    ok = speedup >= 20
    print('bench 2, 1920x1080 bgr8 Image message -> (1, 1024, 392, 3) uint8 patch tensor')
    print(f'  machine: {machine_line(machine())}')
    print(f'  pipeline          median {m_ours:7.3f} ms  p90 {percentile(ours, 90):7.3f} ms')
    for k, v in steps.items():
        print(f'    {k:17s} median {median(v):7.3f} ms')
    print(f'  demo (PIL BGR)    median {m_theirs:7.3f} ms  p90 {percentile(theirs, 90):7.3f} ms')
    print(f'  demo (numpy flip) median {median(theirs_np):7.3f} ms')
    print(f'  speedup {speedup:.1f}x (target >= 20x: {verdict(ok)}); patches vs demo pixel '
          f'values: mean |diff| {diff:.2f} grey levels (single INTER_AREA vs now: '
          f'{diff_area:.2f})')
    write_result(args.json, 'frame_patches', {
        'pipeline_ms': m_ours, 'pipeline_p90_ms': percentile(ours, 90),
        'steps_ms': {k: median(v) for k, v in steps.items()},
        'demo_ms': m_theirs, 'demo_p90_ms': percentile(theirs, 90),
        'demo_numpy_ms': median(theirs_np), 'speedup': speedup,
        'mean_abs_diff_vs_demo': diff, 'mean_abs_diff_vs_single_area': diff_area,
        'targets': {'speedup_ge_20x': ok}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
