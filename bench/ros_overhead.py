"""Bench 4: what ROS adds to a ~/describe call: round trip minus the pipeline's own time.

    . scripts/ros_env.sh .venv && python bench/ros_overhead.py --model-dir TINY [--calls 100]

Starts describe_node (the installed console script) on the tiny ONNX model (onnxruntime, one
thread), publishes a 640x480 rgb8 camera frame on its ``image`` topic, then calls
``/qwen_vl/describe`` with an empty image (= the newest frame, the normal use) ``--calls``
times, one after the other, from an rclpy client in this process. Per call:

    overhead = round trip at the client - (time_to_first_token_ms + decode_ms)

from the Description in the response (time to first token counts from before the node
converts the image message, so the conversion is pipeline time; everything else is ROS:
request and response transport, executor and worker hand-offs, building and publishing the
description). Reported p50 / p95; the baseline is the pipeline time itself.

Needs the loopback ROS environment (scripts/ros_env.sh; ``make bench`` sources it). Target:
p50 overhead at most 5 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_parser, machine, machine_line, median, percentile, verdict, write_result)

MAX_NEW_TOKENS = 8


def start_node(model_dir: Path, log_dir: Path) -> tuple:
    """Start describe_node; return (process, output lines list) once it says it is ready."""
    exe = Path(sys.prefix) / 'bin' / 'describe_node'
    cmd = [str(exe), '--ros-args', '-r', '__node:=qwen_vl', '-p', f'model_dir:={model_dir}',
           '-p', 'backend:=onnxruntime', '-p', 'threads:=1', '-p', 'period_s:=0.0',
           '-p', f'max_new_tokens:={MAX_NEW_TOKENS}', '-p', 'max_image_age_s:=0.0']
    env = dict(os.environ, ROS_LOG_DIR=str(log_dir), PYTHONUNBUFFERED='1',
               RCUTILS_COLORIZED_OUTPUT='0', OMP_NUM_THREADS='1')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if ']: ready: ' in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        raise RuntimeError('describe_node did not get ready:\n' + ''.join(lines[-30:]))
    return proc, lines


def camera_frame(node_clock):
    """Make a 640x480 rgb8 sensor_msgs/Image with the current stamp."""
    from sensor_msgs.msg import Image
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    msg = Image(height=480, width=640, encoding='rgb8', is_bigendian=0, step=640 * 3)
    msg.data = rgb.tobytes()
    msg.header.stamp = node_clock.now().to_msg()
    msg.header.frame_id = 'camera'
    return msg


def measure(calls: int, warmup: int = 5) -> tuple:
    """Publish a frame, then time ``calls`` service calls; return (round trips, pipeline)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from qwen_vl_interfaces.srv import Describe
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_ros_overhead')
    try:
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        client = node.create_client(Describe, '/qwen_vl/describe')
        if not client.wait_for_service(timeout_sec=30):
            raise RuntimeError('no /qwen_vl/describe service')
        pub = node.create_publisher(Image, '/image', 10)

        def call():
            t0 = time.perf_counter()
            future = client.call_async(Describe.Request())
            executor.spin_until_future_complete(future, timeout_sec=60)
            t1 = time.perf_counter()
            response = future.result()
            if response is None:
                raise RuntimeError('the call timed out')
            return 1e3 * (t1 - t0), response

        deadline = time.monotonic() + 30
        while True:  # until the node has a frame (best-effort subscription, no latching)
            pub.publish(camera_frame(node.get_clock()))
            time.sleep(0.2)
            _, response = call()
            if response.success:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f'the node never described a frame: {response.message}')
        trips, pipeline = [], []
        for i in range(warmup + calls):
            ms, response = call()
            if not response.success:
                raise RuntimeError(f'call failed: {response.message}')
            d = response.description
            if i >= warmup:
                trips.append(ms)
                pipeline.append(d.time_to_first_token_ms + d.decode_ms)
        return trips, pipeline
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv=None) -> int:
    """Start the node, time the calls, print the figures, write the JSON result."""
    p = bench_parser(__doc__)
    p.add_argument('--model-dir', required=True, type=Path)
    p.add_argument('--calls', type=int, default=100)
    p.add_argument('--log-dir', type=Path, default=Path('build/ros_log'))
    args = p.parse_args(argv)
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST' or \
            not os.environ.get('ROS_DOMAIN_ID'):
        raise SystemExit('source scripts/ros_env.sh first (loopback DDS, own domain id)')
    proc, _ = start_node(args.model_dir.resolve(), args.log_dir)
    try:
        trips, pipeline = measure(args.calls)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    overhead = [t - q for t, q in zip(trips, pipeline)]
    p50, p95 = median(overhead), percentile(overhead, 95)
    ok = p50 <= 5.0
    print(f'bench 4, ROS overhead of ~/describe ({args.calls} calls, newest 640x480 rgb8 frame, '
          f'tiny model, {MAX_NEW_TOKENS} new tokens)')
    print(f'  machine: {machine_line(machine())}; ROS_DOMAIN_ID {os.environ["ROS_DOMAIN_ID"]}')
    print(f'  round trip     p50 {median(trips):7.2f} ms  p95 {percentile(trips, 95):7.2f} ms')
    print(f'  pipeline time  p50 {median(pipeline):7.2f} ms  p95 {percentile(pipeline, 95):7.2f}'
          ' ms (time to first token + decode, from the response)')
    print(f'  overhead       p50 {p50:7.2f} ms  p95 {p95:7.2f} ms   overhead/pipeline '
          f'{p50 / median(pipeline):.3f}   target p50 <= 5 ms: {verdict(ok)}')
    write_result(args.json, 'ros_overhead', {
        'calls': args.calls, 'round_trip_p50_ms': median(trips),
        'round_trip_p95_ms': percentile(trips, 95), 'pipeline_p50_ms': median(pipeline),
        'pipeline_p95_ms': percentile(pipeline, 95), 'overhead_p50_ms': p50,
        'overhead_p95_ms': p95, 'overhead_ms': overhead, 'targets': {'p50_le_5ms': ok}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
