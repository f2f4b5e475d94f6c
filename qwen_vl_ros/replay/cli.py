r"""qwen-vl-replay: play a rosbag2 recording into the ROS graph and record the answers.

    qwen-vl-replay BAG [--topic T ...] [--rate R] [--remap FROM:=TO ...]
                   [--record TOPIC[:TYPE] ...] [--out FILE.jsonl | DIR]
                   [--wait-ready] [--wait-subscribers N] [--timeout S] [--settle S] [--clock HZ]

Plays BAG (a rosbag2 directory, sqlite3 or mcap) with its recorded timing, scaled by --rate,
publishing each message's stored bytes on its topic with its recorded type. With --out (or
--record) it records the given topics (default /qwen_vl/description/stamped) into a JSONL file
(.jsonl, or - for stdout) or a new rosbag2 directory. Before playing it waits (at most
--timeout seconds) for subscribers on the played topics, and with --wait-ready for the node to
report that its model is loaded; after the last message it keeps recording for --settle seconds.

Network: unless --network is given, DDS discovery is kept on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_LOCALHOST_ONLY=1) when the environment does not
choose; run the node with the same settings and ROS_DOMAIN_ID (. scripts/ros_env.sh).

Example (the node runs in another shell with -r image:=/camera/image_raw):
    qwen-vl-replay my_bag --wait-ready --out answers.jsonl \
        --record /qwen_vl/description/stamped --record /diagnostics

Exit codes: 0 done, 1 interrupted, 2 bad arguments or bag, 3 time-out waiting for the graph.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .bag import ReplayError, ReplayTimeout, parse_record, parse_remaps
from .session import DEFAULT_RECORD, Replay, ReplayOptions

PROG = 'qwen-vl-replay'


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of qwen-vl-replay."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('bag', help='rosbag2 directory (sqlite3 or mcap) or its .db3 / .mcap file')
    p.add_argument('--topic', action='append', default=[],
                   help='recorded topic to play (repeatable; default: every topic)')
    p.add_argument('--rate', type=float, default=1.0,
                   help='speed factor: 2 plays twice as fast, 0.5 at half speed')
    p.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                   help='publish recorded topic FROM on TO (repeatable)')
    p.add_argument('--record', action='append', default=[], metavar='TOPIC[:TYPE]',
                   help='topic to record (repeatable); the type is read from the graph '
                        f'unless given; default with --out: {", ".join(DEFAULT_RECORD)}')
    p.add_argument('--out', help='where to record: FILE.jsonl, - (stdout, JSONL) or a new '
                                 'rosbag2 directory')
    p.add_argument('--out-storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                   help='storage of a rosbag2 --out')
    p.add_argument('--wait-subscribers', type=int, default=1, metavar='N',
                   help='before playing, wait for N subscribers on every played topic '
                        '(0: do not wait)')
    p.add_argument('--wait-ready', action='store_true',
                   help='before playing, wait until the qwen_vl node reports state "ready" '
                        'on /diagnostics (its model is loaded)')
    p.add_argument('--timeout', type=float, default=60.0, metavar='S',
                   help='longest wait for the graph before playing')
    p.add_argument('--settle', type=float, default=2.0, metavar='S',
                   help='keep recording this long after the last message')
    p.add_argument('--clock', type=float, default=0.0, metavar='HZ',
                   help='also publish the bag time on /clock at HZ while playing (for nodes '
                        'with use_sim_time:=true); 0: off')
    p.add_argument('--reliability', choices=('reliable', 'best_effort'), default='reliable',
                   help='QoS reliability of the played topics (reliable reaches every '
                        'subscriber)')
    p.add_argument('--network', action='store_true',
                   help='use the DDS discovery settings of the environment even when they '
                        'reach beyond this machine')
    p.add_argument('--quiet', '-q', action='store_true', help='no progress messages')
    return p


def check_network(allow_network: bool, env=os.environ, warn=None) -> None:
    """Keep DDS on this machine unless told otherwise; warn loudly when it is not.

    Unset discovery variables are set to loopback (they must be, before rclpy.init). Variables
    the user set are respected; if they reach beyond localhost and --network was not given,
    a warning says so.
    """
    warn = warn or (lambda m: print(f'{PROG}: {m}', file=sys.stderr, flush=True))
    rng = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').strip().upper()
    local_only = env.get('ROS_LOCALHOST_ONLY', '').strip() == '1'
    if not rng and not local_only and not allow_network:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        env['ROS_LOCALHOST_ONLY'] = '1'
        warn('ROS discovery not configured: using this machine only '
             '(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST); run the node with the same setting '
             '(. scripts/ros_env.sh), or pass --network')
        return
    if rng in ('LOCALHOST', 'OFF') or (not rng and local_only):
        return
    if not allow_network:
        warn(f'WARNING: ROS_AUTOMATIC_DISCOVERY_RANGE={rng or "(unset, default SUBNET)"}: '
             'replayed data and DDS discovery will leave this machine. Use '
             '. scripts/ros_env.sh (loopback) or pass --network to silence this warning.')


def options_from_args(args) -> ReplayOptions:
    """ReplayOptions of the parsed command line."""
    record = parse_record(args.record)
    if args.out and not record:
        record = [(t, None) for t in DEFAULT_RECORD]
    if record and not args.out:
        args.out = '-'
    if args.wait_subscribers < 0 or args.timeout < 0 or args.settle < 0 or args.clock < 0:
        raise ReplayError('--wait-subscribers, --timeout, --settle and --clock must be >= 0')
    return ReplayOptions(
        bag=args.bag, topics=args.topic, rate=args.rate, remaps=parse_remaps(args.remap),
        record=record, out=args.out, out_storage=args.out_storage,
        wait_subscribers=args.wait_subscribers, wait_ready=args.wait_ready,
        timeout=args.timeout, settle=args.settle, clock_hz=args.clock,
        reliability=args.reliability)


def _stop_on_signals(replay, log) -> None:
    """SIGINT / SIGTERM end the replay cleanly (the output is closed); a second SIGINT aborts.

    These handlers replace rclpy's, which would shut the context down under the running replay.
    """
    def handler(signum, frame) -> None:
        if replay.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log(f'{signal.Signals(signum).name}: stopping; the output so far is kept')
        replay.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv=None) -> int:
    """Entry point of qwen-vl-replay."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Arguments after --ros-args go to rclpy only (FROM:=TO outside it is our --remap's).
    split = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    ros_args = [PROG] + argv[split:]
    args = build_parser().parse_args(argv[:split])

    def log(message: str) -> None:
        if not args.quiet:
            print(f'[{PROG}] {message}', file=sys.stderr, flush=True)

    try:
        options = options_from_args(args)
    except ReplayError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    check_network(args.network)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=ros_args)
    node = executor = thread = None
    stop = threading.Event()
    code = 0
    try:
        node = rclpy.create_node('qwen_vl_replay')
        executor = SingleThreadedExecutor()
        executor.add_node(node)

        def spin() -> None:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.05)

        thread = threading.Thread(target=spin, name='replay-spin', daemon=True)
        thread.start()
        replay = Replay(node, options, log=log)
        _stop_on_signals(replay, log)
        try:
            summary = replay.run()
        except KeyboardInterrupt:   # a second Ctrl-C: stop waiting for anything
            replay.stop()
            summary = replay.summary
            summary.interrupted = True
        for line in summary.lines():
            log(line)
        code = 1 if summary.interrupted else 0
    except ReplayError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        code = 3 if isinstance(e, ReplayTimeout) else 2
    except Exception as e:  # anything else (a bug, a library failure): one line, exit 2
        text = ' '.join(str(e).split())
        print(f'{PROG}: error: {type(e).__name__}: {text}', file=sys.stderr)
        code = 2
    finally:
        stop.set()
        if thread is not None:
            thread.join(2.0)
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
