"""make soak: the node for ten minutes under a camera stream, then 50 random stops.

Part 1, the soak: a 1 s recording of 30 Hz 640x480 rgb8 frames (moving shapes, written with
rosbags) is replayed into describe_node in a loop, each frame stamped anew; the node's timer runs
at 1 Hz and a ~/describe call goes out every 5 s. The node's RSS is sampled every 10 s. Passes
when
- RSS grows by at most 10 MB after the first minute (largest sample after minute 1 minus the
  sample at minute 1);
- every timer tick is described or counted as skipped (the node's final counters: ticks =
  timer descriptions + skipped + failed);
- no call is lost (every call answered: a description, or success=false with a reason);
- the p95 latency of the last minute (a description's source frame stamp to its arrival, timer
  and service alike) is at most 20 % above the first minute's.

Part 2, stops: 50 times a fresh node is sent SIGINT or SIGTERM (a third of the time followed by
a second signal 50 ms later) while loading, idle, mid-generation (a doctored model: ~70 ms per
token) or mid-flood (60 calls in flight); passes when every stop exits 0 within 2 s and leaves
no process of its session behind.

Writes bench/SOAK.md (and --json). Not part of make test: it takes about 17 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))      # node_harness: the node as the launch file starts it
sys.path.insert(0, str(REPO / 'scripts'))   # demo: the tiny model, cached in demo_out/
sys.path.insert(0, str(REPO / 'bench'))

import loopback_env  # noqa: E402,F401  (loopback DDS, a domain id, no hub)
import node_harness as harness  # noqa: E402
from common import machine, machine_line, percentile  # noqa: E402

FPS = 30.0
WIDTH, HEIGHT = 640, 480
PERIOD_S = 1.0
CALL_EVERY_S = 5.0
RSS_EVERY_S = 10.0
MAX_NEW_TOKENS = 16
RSS_LIMIT_MB = 10.0
LATENCY_LIMIT = 1.20
STOP_LIMIT_S = 2.0
STATES = ('loading', 'idle', 'mid-generation', 'mid-flood')


def log(text: str) -> None:
    print(f'[soak {time.strftime("%H:%M:%S")}] {text}', flush=True)


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no VmRSS for {pid}')


def session_pids(sid: int) -> list:
    """Live processes of session ``sid`` (the node is started in a session of its own)."""
    out = []
    for d in Path('/proc').iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def camera_frames(workdir: Path) -> list:
    """Return the recording: 1 s of 30 Hz 640x480 rgb8 frames, as sensor_msgs/Image messages."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import Image

    from qwen_vl_ros.bagtools import write_camera_bag

    bag = workdir / 'camera_bag'
    if not bag.exists():
        write_camera_bag(bag, frames=int(FPS), fps=FPS, width=WIDTH, height=HEIGHT,
                         encoding='rgb8', storage='mcap')
    with AnyReader([bag]) as reader:
        return [deserialize_message(raw, Image) for _, _, raw in reader.messages()]


class Camera(threading.Thread):
    """Replays the recording in a loop at its rate, each frame stamped with the current time."""

    def __init__(self, client, frames: list):
        super().__init__(daemon=True)
        self.client, self.frames, self.sent = client, frames, 0
        self.halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self.halt.is_set():
            msg = self.frames[self.sent % len(self.frames)]
            msg.header.stamp = harness.now_stamp()
            self.client.image_pub.publish(msg)
            self.sent += 1
            delay = t0 + self.sent / FPS - time.monotonic()
            if delay > 0:
                self.halt.wait(delay)


def final_counters(text: str) -> dict:
    """Parse the node's last 'stopped (name value, ...)' line: its non-zero counters."""
    m = re.findall(r': stopped \((.*)\)', text)
    if not m:
        return {}
    pairs = [p.rsplit(' ', 1) for p in m[-1].split(', ') if ' ' in p]
    return {k: int(v) for k, v in pairs if v.isdigit()}


# -- part 1 --------------------------------------------------------------------------------------
def collect_answers(pending: list, calls: list, t0: float) -> None:
    """Move the answered service calls of ``pending`` to ``calls`` (sent, answered s, ok, msg)."""
    for item in list(pending):
        sent, done, fut = item
        if done.is_set():
            r = fut.result()
            calls.append((sent, time.monotonic() - t0, r.success, r.message))
            pending.remove(item)


def soak(model: Path, workdir: Path, seconds: float) -> dict:
    frames = camera_frames(workdir)
    args = harness.launch_arguments(model_dir=str(model), image_topic='/camera/image_raw',
                                    period_s=PERIOD_S, max_new_tokens=MAX_NEW_TOKENS,
                                    image_reliability='reliable', threads=1,
                                    request_timeout_s=60.0)
    node = harness.NodeProcess(args, workdir / 'soak_node')
    node.wait_for_log(harness.READY, 120)
    pid = node.proc.pid
    from qwen_vl_interfaces.msg import Description
    client = harness.RosClient(image_topic='/camera/image_raw')
    arrivals = []     # (Description, wall-clock s, monotonic s) as each arrives
    client.node.create_subscription(
        Description, '/qwen_vl/description/stamped',
        lambda m: arrivals.append((m, time.time(), time.monotonic())), 100)
    client.wait_for_service(30)
    camera = Camera(client, frames)
    calls, rss = [], []        # calls: (sent s, answered s or None, success, message)
    pending = []
    t0 = time.monotonic()
    camera.start()
    next_call, next_rss = 0.0, 0.0
    log(f'soak: {seconds:.0f} s of {FPS:g} Hz {WIDTH}x{HEIGHT} rgb8, timer {PERIOD_S:g} s, '
        f'a call every {CALL_EVERY_S:g} s (node pid {pid})')
    while (now := time.monotonic() - t0) < seconds:
        if now >= next_rss:
            rss.append((now, rss_mb(pid)))
            next_rss += RSS_EVERY_S
            if len(rss) % 6 == 1:
                log(f'  {now:5.0f} s: RSS {rss[-1][1]:.1f} MB, {len(client.stamped)} '
                    f'descriptions, {camera.sent} frames sent')
        if now >= next_call:
            done, fut = client.call_async(client.describe_client, client.describe_request(
                max_new_tokens=MAX_NEW_TOKENS))
            pending.append((now, done, fut))
            next_call += CALL_EVERY_S
        collect_answers(pending, calls, t0)
        time.sleep(0.05)
    camera.halt.set()
    camera.join(5)
    deadline = time.monotonic() + 65
    while pending and time.monotonic() < deadline:
        collect_answers(pending, calls, t0)
        time.sleep(0.05)
    lost = len(pending)
    time.sleep(3.0)             # the last timer job finishes, its description arrives
    described = [m for m, _, _ in arrivals]
    rc, took = node.stop(signal.SIGINT, 10)
    client.close()
    counters = final_counters(node.output())

    # latency: the source frame's stamp -> the description's arrival here
    latencies = []
    for msg, arrived_wall, arrived_mono in list(arrivals):
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        latencies.append((arrived_mono - t0, 1e3 * (arrived_wall - stamp), msg.trigger))
    first = [ms for t, ms, _ in latencies if t < 60]
    last = [ms for t, ms, _ in latencies if t >= seconds - 60]
    p95_first = percentile(first, 95) if first else float('nan')
    p95_last = percentile(last, 95) if last else float('nan')
    med = [round(percentile(x, 50), 1) if x else None for x in (first, last)]
    growth, spread, base = rss_growth(rss)
    timer_described = sum(1 for m in described if m.trigger == 'timer')
    service_ok = sum(1 for c in calls if c[2])
    skipped = {k: v for k, v in counters.items() if k.startswith('timer_skipped_')}
    failed = sum(counters.get(k, 0) for k in ('image_errors', 'prompt_errors', 'runtime_errors',
                                              'internal_errors', 'cancelled'))
    ticks = counters.get('timer_ticks', 0)
    # every description is published once: the node's count less the service answers
    timer_by_node = counters.get('descriptions', 0) - service_ok
    accounted = timer_by_node + sum(skipped.values()) + failed
    refused = [c[3] for c in calls if not c[2]]
    return {
        'seconds': seconds, 'frames_sent': camera.sent,
        'frames_received': counters.get('frames_received', 0),
        'rss_mb': [(round(t), round(mb, 1)) for t, mb in rss],
        'rss_at_1_min_mb': round(base, 1), 'rss_growth_after_1_min_mb': round(growth, 2),
        'rss_max_minus_1_min_mb': round(spread, 2),
        'ticks': ticks, 'timer_descriptions_received': timer_described,
        'timer_descriptions_node': timer_by_node, 'skipped': skipped, 'failed_jobs': failed,
        'ticks_accounted': accounted,
        'calls': len(calls) + lost, 'calls_answered': len(calls), 'calls_lost': lost,
        'calls_ok': service_ok, 'calls_refused': refused,
        'latency_samples_first_min': len(first), 'latency_samples_last_min': len(last),
        'p95_latency_first_min_ms': round(p95_first, 1),
        'p95_latency_last_min_ms': round(p95_last, 1),
        'latency_ratio': round(p95_last / p95_first, 3) if first and last else None,
        'median_latency_first_last_min_ms': med,
        'node_exit_code': rc, 'node_stop_s': round(took, 2), 'counters': counters,
        'pass_rss': growth <= RSS_LIMIT_MB,
        'pass_ticks': ticks > 0 and abs(ticks - accounted) <= 0,
        'pass_calls': lost == 0 and all(m for m in refused),
        'pass_latency': bool(first and last) and p95_last <= LATENCY_LIMIT * p95_first,
        'pass_exit': rc == 0,
    }


def rss_growth(rss: list) -> tuple:
    """(trend growth, largest sample minus the first, the first) of the samples from 60 s on.

    The trend (least-squares slope times the span) is the growth: single samples swing by a
    few MB as the allocator takes and returns memory, which a max-minus-first would count.
    """
    after = [(t, mb) for t, mb in rss if t >= 60]
    if len(after) < 2:
        return float('nan'), float('nan'), float('nan')
    ts = [t for t, _ in after]
    mbs = [mb for _, mb in after]
    tm, mm = sum(ts) / len(ts), sum(mbs) / len(mbs)
    slope = sum((t - tm) * (m - mm) for t, m in after) / sum((t - tm) ** 2 for t in ts)
    return slope * (ts[-1] - ts[0]), max(mbs) - mbs[0], mbs[0]


# -- part 2 --------------------------------------------------------------------------------------
def one_stop(i: int, state: str, sigs: tuple, model: Path, slow: Path, workdir: Path,
             client, rng: random.Random) -> dict:
    args = harness.launch_arguments(model_dir=str(slow if state != 'loading' else model),
                                    threads=1, max_image_age_s=0.0, queue_size=2)
    node = harness.NodeProcess(args, workdir / f'stop_{i:02d}')
    sid = node.proc.pid
    note = ''
    try:
        if state == 'loading':
            node.wait_for_log(r'\]: loading ', 60)
            time.sleep(rng.uniform(0.0, 0.3))
            note = 'loading' if not harness.READY.search(node.output()) else 'just ready'
        else:
            node.wait_for_log(harness.READY, 120)
            client.wait_for_service(30)
            img = harness.image_msg(harness.picture(seed=i))
            if state == 'idle':
                time.sleep(rng.uniform(0.0, 1.0))
            elif state == 'mid-generation':
                client.call_async(client.describe_client, client.describe_request(
                    image=img, max_new_tokens=1000))
                time.sleep(rng.uniform(1.0, 2.0))
            else:
                for _ in range(60):
                    client.call_async(client.describe_client, client.describe_request(
                        image=img, max_new_tokens=rng.choice((4, 64, 1000))))
                time.sleep(rng.uniform(0.0, 0.5))
    except AssertionError as e:
        node.stop(signal.SIGKILL)
        return {'i': i, 'state': state, 'signals': [s.name for s in sigs], 'rc': None,
                'took_s': None, 'orphans': [], 'note': f'did not reach the state: {e}'[:300]}
    t0 = time.monotonic()
    for k, sig in enumerate(sigs):
        if k:
            time.sleep(0.05)
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
    rc = node.wait_exit(10)
    took = time.monotonic() - t0
    time.sleep(0.3)
    orphans = session_pids(sid)
    out = node.output()
    node.stop(signal.SIGKILL)
    for p in orphans:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return {'i': i, 'state': state, 'signals': [s.name for s in sigs], 'rc': rc,
            'took_s': round(took, 3), 'orphans': orphans, 'note': note,
            'traceback': 'Traceback' in out}


def stops(model: Path, slow: Path, workdir: Path, count: int, seed: int) -> list:
    rng = random.Random(seed)
    client = harness.RosClient()
    results = []
    try:
        for i in range(count):
            state = STATES[i % len(STATES)] if i < len(STATES) else rng.choice(STATES)
            first = rng.choice((signal.SIGINT, signal.SIGTERM))
            sigs = (first,) if rng.random() >= 1 / 3 else (
                first, rng.choice((signal.SIGINT, signal.SIGTERM)))
            r = one_stop(i, state, sigs, model, slow, workdir, client, rng)
            results.append(r)
            log(f'stop {i + 1:2d}/{count}: {state:14s} {"+".join(r["signals"]):15s} -> exit '
                f'{r["rc"]} in {r["took_s"]} s, orphans {r["orphans"]} {r["note"]}')
    finally:
        client.close()
    return results


# -- the report ----------------------------------------------------------------------------------
def ok(flag: bool) -> str:
    return 'pass' if flag else '**FAIL**'


def report(path: Path, info: dict, s: dict | None, st: list, seconds: float) -> bool:
    lines = ['# Soak and stops (`make soak`)', '',
             f'Machine: {machine_line(info)}.', '',
             'The tiny random-weight stand-in model on onnxruntime (CPU), so the figures are the '
             "node's own behaviour over time, not NPU speed. Written by `bench/soak.py`.", '']
    passed = True
    if s is not None:
        why = ', '.join(f'{k[14:]} {v}' for k, v in s['skipped'].items()) or 'none'
        crit = [
            (f'RSS growth after the first minute <= {RSS_LIMIT_MB:g} MB',
             f'{s["rss_growth_after_1_min_mb"]:+.2f} MB (least-squares trend of the samples '
             f'from minute 1 on, over that span; {s["rss_at_1_min_mb"]} MB at 1 min, largest '
             f'later sample {s["rss_max_minus_1_min_mb"]:+.2f} MB above it)', s['pass_rss']),
            ('every timer tick described or counted as skipped',
             f'{s["ticks"]} ticks = {s["timer_descriptions_node"]} described + '
             f'{sum(s["skipped"].values())} skipped ({why}) '
             f'+ {s["failed_jobs"]} failed', s['pass_ticks']),
            ('no call lost', f'{s["calls_answered"]} of {s["calls"]} calls answered '
             f'({s["calls_ok"]} described, {len(s["calls_refused"])} refused with a reason'
             + (': ' + '; '.join(sorted(set(m[:80] for m in s['calls_refused'])))
                if s['calls_refused'] else '') + ')', s['pass_calls']),
            (f'p95 latency of the last minute <= {LATENCY_LIMIT:.2f} x the first',
             f'{s["p95_latency_last_min_ms"]} ms vs {s["p95_latency_first_min_ms"]} ms '
             f'(ratio {s["latency_ratio"]}; {s["latency_samples_last_min"]} and '
             f'{s["latency_samples_first_min"]} descriptions; medians '
             f'{s["median_latency_first_last_min_ms"][1]} and '
             f'{s["median_latency_first_last_min_ms"][0]} ms)', s['pass_latency']),
            ('the node exits 0 after the soak', f'exit {s["node_exit_code"]} in '
             f'{s["node_stop_s"]} s', s['pass_exit']),
        ]
        passed &= all(c[2] for c in crit)
        lines += [f'## Soak: {seconds / 60:g} minutes', '',
                  f'{FPS:g} Hz {WIDTH}x{HEIGHT} rgb8 replayed (reliable QoS), timer '
                  f'{PERIOD_S:g} s, a ~/describe call every {CALL_EVERY_S:g} s, '
                  f'max_new_tokens {MAX_NEW_TOKENS}; {s["frames_sent"]} frames sent, '
                  f'{s["frames_received"]} received by the node. Latency = source frame stamp '
                  'to the description\'s arrival at a subscriber.', '',
                  '| criterion | measured | result |', '|---|---|---|']
        lines += [f'| {a} | {b} | {ok(c)} |' for a, b, c in crit]
        lines += ['', 'RSS of the node (MB) every 10 s: ' +
                  ', '.join(f'{mb:g}' for _, mb in s['rss_mb']), '']
    if st:
        good = [r for r in st if r['rc'] == 0 and r['took_s'] is not None
                and r['took_s'] < STOP_LIMIT_S and not r['orphans']]
        passed &= len(good) == len(st)
        worst = max((r['took_s'] or 99) for r in st)
        lines += [f'## Stops: {len(st)}', '',
                  'A fresh node each time, stopped with SIGINT or SIGTERM (a third of the time '
                  'a second signal 50 ms later); mid-generation and mid-flood on a doctored '
                  'model (~70 ms per token), mid-flood = 60 calls in flight.', '',
                  f'Result: {len(good)} of {len(st)} exited 0 within {STOP_LIMIT_S:g} s with no '
                  f'process of their session left ({ok(len(good) == len(st))}); slowest stop '
                  f'{worst:.2f} s.', '',
                  '| state | stops | two signals | exit 0 | slowest (s) | orphans |',
                  '|---|---|---|---|---|---|']
        for state in STATES:
            rs = [r for r in st if r['state'] == state]
            if rs:
                lines.append(
                    f'| {state} | {len(rs)} | {sum(len(r["signals"]) > 1 for r in rs)} | '
                    f'{sum(r["rc"] == 0 for r in rs)} | '
                    f'{max((r["took_s"] or 99) for r in rs):.2f} | '
                    f'{sum(len(r["orphans"]) for r in rs)} |')
        bad = [r for r in st if r not in good]
        if bad:
            lines += ['', 'Failed stops:', ''] + [f'- {r}' for r in bad]
        lines.append('')
    lines.insert(4, f'Overall: {ok(passed)}\n')
    path.write_text('\n'.join(lines))
    return passed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=10.0, help='soak length (default 10)')
    p.add_argument('--stops', type=int, default=50, help='random stops (default 50)')
    p.add_argument('--seed', type=int, default=13)
    p.add_argument('--out', default=str(REPO / 'bench' / 'SOAK.md'))
    p.add_argument('--json', help='also write the figures to this JSON file (default: '
                   'soak.json in --workdir)')
    p.add_argument('--workdir', default=str(REPO / 'demo_out' / 'soak'))
    a = p.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from demo import tiny_model
    model = tiny_model(REPO / 'demo_out')
    slow = workdir / 'slow_model'
    if not slow.exists():
        harness.doctored_model(model, slow, slow_size=1024)
    info = machine()
    seconds = a.minutes * 60
    s = soak(model, workdir, seconds) if seconds > 0 else None
    if s is not None:
        log(f'soak done: RSS growth {s["rss_growth_after_1_min_mb"]} MB, ticks {s["ticks"]} '
            f'accounted {s["ticks_accounted"]}, calls lost {s["calls_lost"]}, p95 '
            f'{s["p95_latency_first_min_ms"]} -> {s["p95_latency_last_min_ms"]} ms')
    st = stops(model, slow, workdir, a.stops, a.seed) if a.stops else []
    passed = report(Path(a.out), info, s, st, seconds)
    with open(a.json or workdir / 'soak.json', 'w') as f:
        json.dump({'soak': s, 'stops': st, 'machine': info, 'passed': passed}, f, indent=2,
                  default=str)
    log(f'{"PASS" if passed else "FAIL"}: {a.out}')
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
