#!/usr/bin/env python3
"""make demo: the node on a synthetic camera recording, end to end, on this machine.

    make demo                      # tiny random-weight model, exported once into demo_out/
    make demo MODEL_DIR=/models/x  # a real model directory (axmodel or qwen-vl-export output)

1. model: MODEL_DIR, or a tiny random-weight Qwen2.5-VL built with ``python -m
   qwen_vl_ros.export.tiny`` and exported with ``qwen-vl-export`` (kept in demo_out/ and reused
   until the exporter's code changes);
2. a recording: a few seconds of moving shapes as a rosbag2 (demo_out/recording, written with
   rosbags), recorded "in 2024";
3. describe_node started as the launch file starts it, with use_sim_time and a timer;
4. the recording replayed into it with qwen-vl-replay's engine, its time on /clock, while every
   description is printed with the stamp of its source frame and its timings (also recorded
   into demo_out/descriptions.jsonl);
5. a few ~/describe service calls: the newest frame with the default prompt, with a prompt of
   its own, and an image sent in the request;
6. the node stopped with SIGINT; its counters printed.

All DDS traffic stays on loopback (scripts/ros_env.sh; set here too when it is not set).
The demo model has random weights: its text is meaningless, but every stage of the pipeline
(vision encoder, prefill, decode, sampling, detokenizer) runs for real.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE = 'qwen_vl'
CAMERA = '/camera/image_raw'
START_NS = 1_704_067_200_000_000_000      # the recording's first frame: 2024-01-01 00:00:00 UTC


def setup_env() -> None:
    """Loopback-only DDS with a per-run domain, the venv as ROS prefix, no model downloads."""
    env = os.environ
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_LOCALHOST_ONLY'] = '1'
    env.pop('ROS_STATIC_PEERS', None)
    env.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env.setdefault('HF_HUB_OFFLINE', '1')
    env.setdefault('TRANSFORMERS_OFFLINE', '1')
    env.setdefault('RCUTILS_COLORIZED_OUTPUT', '0')


def say(text: str = '') -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f'\n== {text}')


# -- 1. the model -----------------------------------------------------------------------------
def exporter_digest() -> str:
    """Hash the exporter's code: the cached tiny model is rebuilt when it changes."""
    import qwen_vl_ros.export as export
    h = hashlib.sha256()
    for f in sorted(Path(export.__file__).parent.glob('*.py')):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def venv_tool(name: str, module: str) -> list:
    exe = Path(sys.prefix) / 'bin' / name
    return [str(exe)] if exe.is_file() else [sys.executable, '-m', module]


def tiny_model(out: Path) -> Path:
    """Build (or reuse) the tiny random-weight model: HF checkpoint -> ONNX stand-ins."""
    hf_dir, onnx_dir, stamp = out / 'tiny_hf', out / 'tiny_onnx', out / 'tiny_onnx.stamp'
    # prefill 512 (the AX650N build has 320): the tiny tokenizer spells prompts out in many
    # tokens, and the demo's ~/detect prompt plus 256 image tokens needs more than 320
    digest = exporter_digest() + ' prefill 512'
    if onnx_dir.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        say(f'reusing the tiny model in {onnx_dir}')
        return onnx_dir
    for d in (hf_dir, onnx_dir):
        shutil.rmtree(d, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    t0 = time.monotonic()
    say('building a tiny random-weight Qwen2.5-VL checkpoint (python -m '
        'qwen_vl_ros.export.tiny) ...')
    subprocess.run([sys.executable, '-m', 'qwen_vl_ros.export.tiny', '--out', str(hf_dir)],
                   check=True, stdout=subprocess.DEVNULL)
    say('exporting it to ONNX stand-ins (qwen-vl-export) ...')
    subprocess.run(venv_tool('qwen-vl-export', 'qwen_vl_ros.export.cli') +
                   ['--hf-dir', str(hf_dir), '--out', str(onnx_dir), '--prefill-len', '512'],
                   check=True)
    stamp.write_text(digest + '\n')
    say(f'tiny model ready in {time.monotonic() - t0:.1f} s: {onnx_dir}')
    return onnx_dir


# -- 3. the node ------------------------------------------------------------------------------
def node_command(model_dir: Path, args) -> list:
    """describe_node with the --ros-args that launch/describe.launch.py would pass."""
    exe = next((p for p in (Path(sys.prefix) / 'lib' / 'qwen_vl_ros' / 'describe_node',
                            Path(sys.prefix) / 'bin' / 'describe_node') if p.is_file()), None)
    if exe is None:
        sys.exit(f'demo: describe_node is not installed in {sys.prefix} (run make install)')
    cmd = [str(exe), '--ros-args', '-r', f'__node:={NODE}']
    params = Path(sys.prefix) / 'share' / 'qwen_vl_ros' / 'config' / 'describe.yaml'
    if params.is_file():
        cmd += ['--params-file', str(params)]
    compressed = args.encoding in ('jpeg', 'png')
    for name, value in (('model_dir', str(model_dir)), ('backend', args.backend),
                        ('period_s', repr(float(args.period))),   # a float needs its '.'
                        ('max_new_tokens', str(args.max_new_tokens)),
                        ('image_transport', 'compressed' if compressed else 'raw'),
                        ('use_sim_time', 'true')):
        cmd += ['-p', f'{name}:={value}']
    if not args.model_dir:
        # the tiny model's generation_config is near-greedy (top_k 1), and its greedy box list
        # is empty: sample, so that ~/detect shows boxes (random weights: noise either way)
        cmd += ['-p', 'temperature:=1.5', '-p', 'top_k:=0', '-p', 'top_p:=1.0']
    cmd += ['-r', f'image:={CAMERA}', '-r', f'image/compressed:={CAMERA}/compressed']
    return cmd


class NodeProcess:
    def __init__(self, cmd: list, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1'))

    def text(self) -> str:
        return self.log_path.read_text(errors='replace')

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._log.close()
        return rc


# -- 4./5. the demo's own ROS node ------------------------------------------------------------
class Watcher:
    """Prints every timer description as it arrives; counts all of them."""

    def __init__(self, node, frame_of):
        from qwen_vl_interfaces.msg import Description
        self.frame_of = frame_of
        self.count = 0
        self._lock = threading.Lock()
        node.create_subscription(Description, f'/{NODE}/description/stamped', self.on_desc, 50)

    def on_desc(self, msg) -> None:
        with self._lock:
            self.count += 1
        if msg.trigger != 'service':   # service answers are printed from the response
            say(format_description(msg, self.frame_of))


def format_description(d, frame_of) -> str:
    stamp = f'{d.header.stamp.sec}.{d.header.stamp.nanosec:09d}'
    frame = frame_of(d.header.stamp)
    source = f'frame {frame:3d}' if frame is not None else 'request image'
    text = ' '.join(d.text.split())
    if len(text) > 70:
        text = text[:67] + '...'
    return (f'[{d.trigger:7s}] {source} stamp {stamp} ({d.header.frame_id or "-"}) '
            f'"{text}"\n'
            f'          {d.prompt_tokens} prompt + {d.generated_tokens} generated tokens '
            f'({d.finish_reason}); preprocess {d.preprocess_ms:.0f} ms, vision '
            f'{d.vision_ms:.0f} ms, first token {d.time_to_first_token_ms:.0f} ms, decode '
            f'{d.decode_ms:.0f} ms ({d.tokens_per_second:.1f} tokens/s)')


def call_describe(node, client, prompt: str, image, timeout: float):
    from qwen_vl_interfaces.srv import Describe
    req = Describe.Request()
    req.prompt = prompt
    if image is not None:
        req.image = image
    return call(client, req, timeout)


def request_image(rgb, stamp_ns: int):
    from sensor_msgs.msg import Image
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8', is_bigendian=0,
                step=rgb.shape[1] * 3, data=rgb.tobytes())
    msg.header.frame_id = 'request'
    msg.header.stamp.sec = stamp_ns // 1_000_000_000
    msg.header.stamp.nanosec = stamp_ns % 1_000_000_000
    return msg


def typed_and_detect(node, describe_client, image, out: Path, timeout: float) -> None:
    """Step 5b: a typed answer, then ~/detect with ~/annotated_image saved as a PNG."""
    import cv2
    import numpy as np
    from qwen_vl_interfaces.srv import Describe
    from sensor_msgs.msg import Image
    step('5b. a typed answer (~/describe with choices) and ~/detect with ~/annotated_image')
    req = Describe.Request(prompt='Is the disc red?', image=image, choices=['yes', 'no'])
    r = call(describe_client, req, timeout)
    if r is not None and r.success:
        say(f"-> choices ['yes', 'no']: {r.description.text!r} (choice_index "
            f'{r.description.choice_index}, {r.description.generated_tokens} token(s), '
            f'finish {r.description.finish_reason})')
    else:
        say(f'-> typed answer failed: {r.message if r is not None else "no answer in time"}')
    try:
        from qwen_vl_interfaces.srv import Detect
    except ImportError as e:
        say(f'-> ~/detect skipped: vision_msgs is not installed ({e})')
        return
    images = []
    sub = node.create_subscription(Image, f'/{NODE}/annotated_image', images.append, 1)
    end = time.monotonic() + 10
    while node.count_publishers(f'/{NODE}/annotated_image') < 1 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1.0)   # let the node see this subscriber (it draws only while subscribed)
    client = node.create_client(Detect, f'/{NODE}/detect')
    client.wait_for_service(timeout_sec=10.0)
    labels = ['disc', 'square', 'triangle']
    for attempt in range(1, 9):
        # random weights: ask until the sampled answer has a box, to show one drawn
        req = Detect.Request(labels=labels, image=image, max_new_tokens=160)
        r = call(client, req, timeout)
        if r is None or not r.success:
            say(f'-> ~/detect failed: {r.message if r is not None else "no answer in time"}')
            break
        boxes = [(d.results[0].hypothesis.class_id, round(d.bbox.center.position.x),
                  round(d.bbox.center.position.y), round(d.bbox.size_x), round(d.bbox.size_y),
                  round(d.results[0].hypothesis.score, 3)) for d in r.detections.detections]
        say(f'-> ~/detect {labels} (try {attempt}): answer {r.text!r}' +
            (f' ({r.message})' if r.message else ''))
        say(f'   boxes in the 320x240 request image (label, centre x, y, size x, y, score): '
            f'{boxes}')
        if boxes:
            break
    end = time.monotonic() + 5
    while not images and time.monotonic() < end:
        time.sleep(0.05)
    node.destroy_subscription(sub)
    if images:
        m = images[-1]
        bgr = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
        cv2.imwrite(str(out / 'annotated_image.png'), bgr)
        say(f'   ~/annotated_image ({m.width}x{m.height} {m.encoding}) saved as '
            f'{out / "annotated_image.png"}')
    else:
        say('   no ~/annotated_image received')


def call(client, request, timeout: float):
    """Call a service and wait (bounded); the response or None."""
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        client.remove_pending_request(future)
        return None
    return future.result()


# -- the whole demo ---------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(REPO / 'demo_out'), help='work directory')
    p.add_argument('--model-dir', default='', help='real model directory (default: tiny)')
    p.add_argument('--backend', default='auto', choices=('auto', 'axengine', 'onnxruntime'))
    p.add_argument('--seconds', type=float, default=5.0, help='length of the recording')
    p.add_argument('--fps', type=float, default=10.0)
    p.add_argument('--encoding', default='jpeg', choices=('rgb8', 'bgr8', 'jpeg', 'png'))
    p.add_argument('--storage', default='mcap', choices=('sqlite3', 'mcap'))
    p.add_argument('--period', type=float, default=1.0, help='timer period_s of the node')
    p.add_argument('--max-new-tokens', type=int, default=16)
    p.add_argument('--load-timeout', type=float, default=600.0,
                   help='longest wait for the node to load the model')
    p.add_argument('--answer-timeout', type=float, default=300.0,
                   help='longest wait for one service answer')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_env()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say(f'qwen_vl_ros demo (work directory {out}; ROS_DOMAIN_ID '
        f'{os.environ["ROS_DOMAIN_ID"]}, DDS on loopback only)')

    step('1. model')
    if args.model_dir:
        model_dir = Path(args.model_dir).resolve()
        if not model_dir.is_dir():
            sys.exit(f'demo: MODEL_DIR {model_dir} is not a directory')
        say(f'using the model directory {model_dir}')
    else:
        model_dir = tiny_model(out)
        say('NOTE: random weights - the text below is meaningless; every stage of the '
            'pipeline is real.')

    step('2. recording')
    from qwen_vl_ros.bagtools import moving_shapes, write_camera_bag
    bag_dir = out / 'recording'
    shutil.rmtree(bag_dir, ignore_errors=True)
    frames = max(1, int(round(args.seconds * args.fps)))
    bag = write_camera_bag(bag_dir, frames=frames, fps=args.fps, encoding=args.encoding,
                           storage=args.storage, start_ns=START_NS)
    say(f'{bag_dir}: {frames} frames of moving shapes, 320x240 {args.encoding}, '
        f'{args.fps:g} Hz, {bag.duration_s:.1f} s on {bag.topic} ({args.storage})')
    index_of = {s: i for i, s in enumerate(bag.stamps_ns)}

    def frame_of(stamp):
        return index_of.get(stamp.sec * 1_000_000_000 + stamp.nanosec)

    step('3. node')
    cmd = node_command(model_dir, args)
    node_proc = NodeProcess(cmd, out / 'node.log')
    say('describe_node ' + ' '.join(cmd[1:]))
    say(f'(its log: {out / "node.log"})')
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    rclpy.init()
    demo = executor = None
    stop = threading.Event()
    described = 0
    try:
        t0 = time.monotonic()
        if not node_proc.wait_for('ready: ', args.load_timeout):
            say(node_proc.text()[-3000:])
            say(f'demo: the node did not get ready (exit code {node_proc.proc.poll()})')
            return 1
        say(f'model loaded, node ready after {time.monotonic() - t0:.1f} s')

        demo = rclpy.create_node('qwen_vl_demo')
        watcher = Watcher(demo, frame_of)
        from qwen_vl_interfaces.srv import Describe
        client = demo.create_client(Describe, f'/{NODE}/describe')
        executor = SingleThreadedExecutor()
        executor.add_node(demo)

        def spin():
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.05)

        threading.Thread(target=spin, daemon=True).start()

        step(f'4. replay (timer mode: period_s {args.period:g}, use_sim_time, /clock from the '
             'recording)')
        from qwen_vl_ros.replay import Replay, ReplayOptions
        jsonl = out / 'descriptions.jsonl'
        options = ReplayOptions(
            bag=str(bag_dir), rate=1.0, clock_hz=50.0, settle=1.5, timeout=60.0,
            record=[(f'/{NODE}/description/stamped', 'qwen_vl_interfaces/msg/Description')],
            out=str(jsonl))
        replay = Replay(demo, options, log=lambda m: say(f'  replay: {m}'))
        summary = replay.run()
        sim_now = replay.bag_now_ns()   # the node's clock (use_sim_time) stays here now
        for line in summary.lines():
            say(f'  replay: {line}')
        say(f'  descriptions recorded in {jsonl}')

        # A description still being generated (a slow model) is printed when it comes; the
        # service calls below wait in the node's queue behind it.
        step('5. service calls to ~/describe')
        if not client.wait_for_service(timeout_sec=10.0):
            say('demo: the ~/describe service is not there')
            return 1
        calls = [('', None, 'the newest frame, default prompt'),
                 ('Which shapes do you see, and where?', None, 'the newest frame'),
                 ('What colour is the disc?',
                  request_image(moving_shapes(7, 320, 240), sim_now),
                  'an image sent in the request')]
        for prompt, image, what in calls:
            say(f'-> {what}: prompt ' + (repr(prompt) if prompt else "(the node's default)"))
            t = time.monotonic()
            r = call_describe(demo, client, prompt, image, args.answer_timeout)
            if r is None:
                say('   no answer in time')
            elif not r.success:
                say(f'   refused: {r.message}')
            else:
                say(format_description(r.description, frame_of) +
                    f'\n          answered in {time.monotonic() - t:.2f} s')
        described = watcher.count
        typed_and_detect(demo, client, request_image(moving_shapes(7, 320, 240), sim_now), out,
                         args.answer_timeout)
    finally:
        stop.set()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if demo is not None:
            demo.destroy_node()
        rclpy.try_shutdown()
        rc = node_proc.stop()

    step('6. node stopped')
    stopped = [ln for ln in node_proc.text().splitlines() if ': stopped (' in ln]
    say(f'exit code {rc}; its counters: ' +
        (stopped[-1].split(': stopped ', 1)[-1] if stopped else '(no summary in the log)'))
    say(f'descriptions received by the demo: {described} ({frames} frames played)')
    problem = exit_problem(rc)
    if problem:
        say(f'demo: {problem} (its log: {out / "node.log"})')
    return 0 if described and not problem else 1


def exit_problem(rc) -> str | None:
    """Say what is wrong with describe_node's exit code after SIGINT (None: 0, all well).

    A node killed after 15 s shows as SIGKILL; one that crashed while stopping as its signal
    (SIGSEGV = -11).
    """
    if rc == 0:
        return None
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f'signal {-rc}'
        return f'describe_node was killed by {name} (exit code {rc}) while stopping'
    return f'describe_node exited with code {rc} after SIGINT (expected 0)'


if __name__ == '__main__':
    sys.exit(main())
