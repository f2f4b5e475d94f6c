#!/usr/bin/env python3
"""What reaches a subscription over DDS on this machine's loopback: camera frames by size.

    scripts/with_ros_env.sh python scripts/dds_inflow.py [--frames 30] [--rate 10]
        [--sizes 640x480,1280x720,1920x1080] [--transports raw,compressed] [--markdown]

For each frame size, transport (raw rgb8 sensor_msgs/Image, or JPEG CompressedImage) and QoS
pairing (publisher -> subscription reliability), a publisher in a child process (another DDS
participant, as a camera driver is) sends ``--frames`` frames at ``--rate`` Hz to a subscription
in this process shaped like the node's (keep last 1, volatile). Printed: frames received of
those sent, the middleware's message-lost events (rmw MESSAGE_LOST, where the rmw reports it),
and the mean latency from the header stamp. The README's table (issue 9) comes from here.

Publishers use what camera drivers use: reliable = rmw's default profile (keep last 10, what
image_transport publishes with), best_effort = sensor-data QoS (keep last 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time

# DDS stays on loopback with its own domain (the repo's rule, scripts/ros_env.sh).
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
os.environ.pop('ROS_STATIC_PEERS', None)
os.environ['ROS_DOMAIN_ID'] = (os.environ.get('QVR_ROS_DOMAIN_ID')
                               or os.environ.get('ROS_DOMAIN_ID') or str(1 + os.getpid() % 100))

PAIRS = (('best_effort', 'best_effort'), ('reliable', 'best_effort'), ('reliable', 'reliable'))
TOPIC = '/dds_inflow/image'


def qos(reliability: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                                   else ReliabilityPolicy.BEST_EFFORT))


def make_message(transport: str, width: int, height: int):
    import cv2
    import numpy as np
    from sensor_msgs.msg import CompressedImage, Image
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // width), (y * 255 // height), (x + y) % 256],
                   axis=2).astype(np.uint8)
    cv2.circle(rgb, (width // 3, height // 2), height // 5, (230, 40, 40), -1)
    if transport == 'raw':
        msg = Image(height=height, width=width, encoding='rgb8', is_bigendian=0,
                    step=width * 3)
        msg.data = rgb.tobytes()
        return msg
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    msg = CompressedImage(format='rgb8; jpeg compressed bgr8')
    msg.data = buf.tobytes()
    return msg


def publish(args) -> int:
    """Child process: wait for the subscription, send the frames at the rate, linger."""
    import rclpy
    from sensor_msgs.msg import CompressedImage, Image
    width, height = (int(v) for v in args.size.split('x'))
    rclpy.init()
    node = rclpy.create_node('dds_inflow_pub')
    msg_type = Image if args.transport == 'raw' else CompressedImage
    depth = 10 if args.reliability == 'reliable' else 5
    pub = node.create_publisher(msg_type, TOPIC, qos(args.reliability, depth))
    msg = make_message(args.transport, width, height)
    deadline = time.monotonic() + 15.0
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)   # let the endpoints finish matching (both directions)
    period = 1.0 / args.rate
    start = time.monotonic()
    for i in range(args.frames):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = str(i)
        pub.publish(msg)
    time.sleep(1.0)   # reliable: let retransmissions finish before the writer goes
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def event_callbacks(on_lost):
    """SubscriptionEventCallbacks with message_lost (rclpy.event_handler; Humble: qos_event)."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:   # Humble
        from rclpy.qos_event import SubscriptionEventCallbacks
    return SubscriptionEventCallbacks(message_lost=on_lost)


def measure(node, executor_lock, transport, size, pub_rel, sub_rel, frames, rate) -> dict:
    """One case: start the publisher process, count what the subscription gets."""
    from sensor_msgs.msg import CompressedImage, Image
    got = []
    lost = [0]
    latency = []

    def on_msg(msg):
        got.append(int(msg.header.frame_id))
        now = node.get_clock().now().nanoseconds
        st = msg.header.stamp
        latency.append((now - (st.sec * 10**9 + st.nanosec)) * 1e-6)

    def on_lost(info):
        lost[0] += int(info.total_count_change)

    msg_type = Image if transport == 'raw' else CompressedImage
    events = 'yes'
    with executor_lock:
        try:
            sub = node.create_subscription(msg_type, TOPIC, on_msg, qos(sub_rel, 1),
                                           event_callbacks=event_callbacks(on_lost))
        except Exception:   # the rmw does not report lost messages
            events = 'n/a'
            sub = node.create_subscription(msg_type, TOPIC, on_msg, qos(sub_rel, 1))
    child = subprocess.run(
        [sys.executable, __file__, '--publish', '--transport', transport, '--size', size,
         '--reliability', pub_rel, '--frames', str(frames), '--rate', str(rate)],
        capture_output=True, text=True, timeout=120)
    time.sleep(0.5)
    with executor_lock:
        node.destroy_subscription(sub)
    return {'transport': transport, 'size': size, 'pub': pub_rel, 'sub': sub_rel,
            'sent': frames, 'received': len(set(got)),
            'lost_events': lost[0] if events == 'yes' else 'n/a',
            'latency_ms': sum(latency) / len(latency) if latency else float('nan'),
            'bytes': len(make_message(transport, *(int(v) for v in size.split('x'))).data),
            'child_rc': child.returncode, 'child_err': child.stderr.strip()[-300:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--rate', type=float, default=10.0)
    p.add_argument('--sizes', default='640x480,1280x720,1920x1080')
    p.add_argument('--transports', default='raw,compressed')
    p.add_argument('--markdown', action='store_true', help='print the README table')
    p.add_argument('--publish', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--transport', help=argparse.SUPPRESS)
    p.add_argument('--size', help=argparse.SUPPRESS)
    p.add_argument('--reliability', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.publish:
        return publish(args)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    rclpy.init()
    node = rclpy.create_node('dds_inflow_sub')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    lock = threading.Lock()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            with lock:
                executor.spin_once(timeout_sec=0.01)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    rows = []
    try:
        for size in args.sizes.split(','):
            for transport in args.transports.split(','):
                for pub_rel, sub_rel in PAIRS:
                    row = measure(node, lock, transport, size, pub_rel, sub_rel, args.frames,
                                  args.rate)
                    rows.append(row)
                    print(f"{size:>9} {transport:<10} {pub_rel:>11} -> {sub_rel:<11} "
                          f"{row['received']:>3}/{row['sent']} received, lost events "
                          f"{row['lost_events']}, {row['bytes'] / 1e6:.2f} MB/frame, latency "
                          f"{row['latency_ms']:.1f} ms"
                          + (f" (publisher exit {row['child_rc']}: {row['child_err']})"
                             if row['child_rc'] else ''), flush=True)
    finally:
        stop.set()
        thread.join(2.0)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    rmw = os.environ.get('RMW_IMPLEMENTATION', 'rmw default')
    machine = (f'{platform.machine()}, {os.cpu_count()} CPUs, Python '
               f'{platform.python_version()}, {rmw}, {args.frames} frames at {args.rate:g} Hz')
    print(f'machine: {machine}')
    if args.markdown:
        print()
        print('| frame | transport | bytes/frame | publisher → subscription | received '
              '| message-lost events |')
        print('|---|---|---|---|---|---|')
        for r in rows:
            print(f"| {r['size']} | {r['transport']} | {r['bytes'] / 1e6:.2f} MB | "
                  f"{r['pub']} → {r['sub']} | {r['received']} / {r['sent']} | "
                  f"{r['lost_events']} |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
