"""qwen-vl-describe --bag: describe the frames of a rosbag2 recording, without a ROS graph.

    qwen-vl-describe --model-dir DIR --bag BAG [--topic TOPIC] [--every SECONDS] [--out F.jsonl]

Reads the bag with rosbags (sqlite3 or mcap; sensor_msgs/Image or CompressedImage), takes one
frame per ``--every`` seconds of recording time (the first message at or after each multiple
of SECONDS from the topic's first message; 0 = every frame) and runs each through the core
pipeline. Writes one JSON object per frame, in bag order:

    {"topic": ..., "index": 12, "bag_time_ns": ..., "offset_s": 1.2,
     "stamp": {"sec": ..., "nanosec": ...}, "frame_id": "camera", "prompt": ...,
     "text": ..., "token_ids": [...], "prompt_tokens": ..., "generated_tokens": ...,
     "finish_reason": ..., "timings_ms": {...}, "tokens_per_second": ...}

``index`` is the message's number on the topic, ``offset_s`` its bag time from the topic's
first message. A frame that cannot be described (corrupt data, unsupported encoding, too large)
gets a line with an ``error`` field instead of the result fields; the count of such frames is
printed on stderr at the end. Exit code 0, or 1 when frames were selected but none could be
described, 2 for a bad bag, topic or model.
"""

from __future__ import annotations

import json
import sys
import time

from ..image_msg import compressed_to_rgb, image_to_rgb
from ..replay.bag import ReplayError, open_reader
from ..vlm import VLMError
from .describe import error_line, generation_options, load_pipeline, result_dict

IMAGE_TYPES = {'sensor_msgs/msg/Image': False, 'sensor_msgs/msg/CompressedImage': True}
PROG = 'qwen-vl-describe'


class BagError(Exception):
    """The bag or topic cannot be used."""


def open_bag(path: str):
    """Open a rosbags AnyReader on a rosbag2 recording (the replay tool's reader)."""
    try:
        return open_reader(path)
    except ReplayError as e:
        raise BagError(str(e)) from None


def image_connections(reader, topic: str | None):
    """Return (topic, msgtype, connections) of the image topic to annotate."""
    images = sorted({(c.topic, c.msgtype) for c in reader.connections
                     if c.msgtype in IMAGE_TYPES})
    listing = ', '.join(f'{c.topic} ({c.msgtype})' for c in reader.connections) or 'no topics'
    if topic is None:
        if len(images) != 1:
            raise BagError(f'give --topic: the bag has {len(images)} image topics ({listing})')
        topic = images[0][0]
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise BagError(f'topic {topic} is not in the bag; it has: {listing}')
    msgtype = conns[0].msgtype
    if msgtype not in IMAGE_TYPES:
        raise BagError(f'topic {topic} has type {msgtype}, not sensor_msgs/msg/Image or '
                       'CompressedImage')
    return topic, msgtype, conns


def select_frames(messages, every_s: float):
    """Yield (index, connection, bag time ns, raw) of one message per ``every_s`` seconds."""
    every_ns = max(0, int(round(every_s * 1e9)))
    t0 = None
    due = None
    for index, (conn, t, raw) in enumerate(messages):
        if t0 is None:
            t0 = due = t
        if t < due:
            continue
        yield index, conn, t, raw
        due = t + 1 if every_ns == 0 else t0 + ((t - t0) // every_ns + 1) * every_ns


def annotate_bag(args) -> int:
    """Run qwen-vl-describe --bag with the parsed arguments (see describe.build_parser)."""
    if args.image:
        print(f'{PROG}: error: give either --image or --bag, not both', file=sys.stderr)
        return 2
    if args.every is None:
        args.every = 1.0
    if args.every < 0:
        print(f'{PROG}: error: --every must be >= 0', file=sys.stderr)
        return 2
    try:
        reader = open_bag(args.bag)
    except BagError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    out = None
    try:
        topic, msgtype, conns = image_connections(reader, args.topic)
        pipe = load_pipeline(args, progress=lambda m: print(m, file=sys.stderr))
        out = open(args.out, 'w', encoding='utf-8') if args.out else sys.stdout
        return _annotate(reader, topic, msgtype, conns, pipe, args, out)
    except (BagError, VLMError) as e:
        print(f'{PROG}: error: {error_line(e)}', file=sys.stderr)
        return 2
    finally:
        reader.close()
        if out is not None and out is not sys.stdout:
            out.close()


def _annotate(reader, topic, msgtype, conns, pipe, args, out) -> int:
    compressed = IMAGE_TYPES[msgtype]
    options = generation_options(args)
    described = failed = 0
    t_start = time.perf_counter()
    t0 = None
    for index, conn, bag_ns, raw in select_frames(reader.messages(connections=conns),
                                                  args.every):
        t0 = bag_ns if t0 is None else t0
        line = {'topic': topic, 'index': index, 'bag_time_ns': bag_ns,
                'offset_s': round((bag_ns - t0) / 1e9, 6)}
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as e:  # corrupt CDR: rosbags raises assorted errors
            msg = None
            line['error'] = f'cannot deserialize the message: {type(e).__name__}: {e}'
        if msg is not None:
            line.update(stamp={'sec': int(msg.header.stamp.sec),
                               'nanosec': int(msg.header.stamp.nanosec)},
                        frame_id=str(msg.header.frame_id), prompt=args.prompt)
            try:
                rgb = (compressed_to_rgb(msg, bit_depth=args.bit_depth) if compressed
                       else image_to_rgb(msg, bit_depth=args.bit_depth))
                result = pipe.describe([rgb], args.prompt, options)
                line = result_dict(result, **line)
                if result.problem:      # a cut typed answer: not an answer (text kept)
                    line['error'] = result.problem
            except Exception as e:  # this frame fails (VLMError, or a bug): the rest go on
                line['error'] = f'{type(e).__name__}: {" ".join(str(e).split())}'
        if 'error' in line:
            failed += 1
            status = f'error: {line["error"]}'
        else:
            described += 1
            t = line['timings_ms']
            total = t.get('time_to_first_token', 0.0) + t.get('decode', 0.0)
            status = f'{line["generated_tokens"]} tokens in {total:.0f} ms: {line["text"]!r}'
        print(f'[{topic} #{index} +{line["offset_s"]:.2f} s] {status}', file=sys.stderr)
        out.write(json.dumps(line, ensure_ascii=False) + '\n')
        out.flush()
    took = time.perf_counter() - t_start
    total = described + failed
    print(f'{PROG}: {total} frame(s) of {topic}: {described} described, {failed} error(s), '
          f'{took:.1f} s', file=sys.stderr)
    return 1 if total and not described else 0
