"""The node on a full-size export: start describe_node, ask ~/describe about an image, stop it.

Prints one JSON line: success, message, text, the node's timings. Loopback DDS only
(test/loopback_env.py), the test harness's process handling (test/node_harness.py).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
import loopback_env  # noqa: E402,F401  (sets the DDS environment before rclpy loads)
import node_harness as nh  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--image', required=True)
    parser.add_argument('--prompt', default='Describe this image.')
    parser.add_argument('--max-new-tokens', type=int, default=8)
    parser.add_argument('--timeout', type=float, default=900.0)
    args = parser.parse_args(argv)
    import cv2
    rgb = cv2.imread(args.image)[:, :, ::-1].copy()
    node_args = ['--ros-args', '-p', f'model_dir:={args.model_dir}',
                 '-p', 'backend:=onnxruntime', '-p', 'period_s:=0.0',
                 '-p', f'request_timeout_s:={args.timeout}']
    with tempfile.TemporaryDirectory() as logs, \
            nh.ready_node(node_args, Path(logs), timeout=args.timeout) as node, \
            nh.service_client(timeout=60) as client:
        answer = client.describe(args.prompt, nh.image_msg(rgb), args.max_new_tokens,
                                 timeout=args.timeout)
        d = answer.description
        print(json.dumps({'success': bool(answer.success), 'message': answer.message,
                          'text': d.text, 'finish_reason': d.finish_reason,
                          'node_log_lines': len(node.output().splitlines())}), flush=True)
    return 0 if answer.success else 1


if __name__ == '__main__':
    sys.exit(main())
