"""qwen-vl-replay plays a bag whose other topics have message types not installed (issue 9, 5).

A recording from a robot holds topics of packages this machine lacks (here acme_msgs/msg/Gizmo,
and a channel recorded without a schema): each is skipped with one warning and the camera
plays; asked for by name, such a topic is an error; a bag with nothing playable is an error.
Both storages. The bag annotation (qwen-vl-describe --bag) reads only the image topic: it
describes such a bag too.
"""
import time

import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from qwen_vl_ros.bagtools import COMPRESSED_IMAGE, compressed_message, moving_shapes, typestore
from test_replay import Echo, run_replay

CAMERA = '/front/image/compressed'


@pytest.fixture
def echo():
    e = Echo(CAMERA, compressed=True)
    yield e
    e.close()


def write_mixed_bag(path, storage: str, frames: int = 5, camera: bool = True) -> list:
    """Write a camera topic, /gizmo (a type not installed) and /mystery (empty schema)."""
    store = typestore()
    store.register(get_types_from_msg('int32 value\nstring name\n', 'acme_msgs/msg/Gizmo'))
    empty = typestore()
    empty.register(get_types_from_msg('', 'acme_msgs/msg/Mystery'))
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    stamps = []
    start = time.time_ns()
    with Writer(path, version=9, storage_plugin=plugin) as w:
        cam = w.add_connection(CAMERA, COMPRESSED_IMAGE, typestore=store) if camera else None
        gizmo = w.add_connection('/gizmo', 'acme_msgs/msg/Gizmo', typestore=store)
        mystery = w.add_connection('/mystery', 'acme_msgs/msg/Mystery', msgdef='',
                                   rihs01=empty.hash_rihs01('acme_msgs/msg/Mystery'))
        for i in range(frames):
            t = start + i * 50_000_000
            if cam is not None:
                msg = compressed_message(store, moving_shapes(i, 64, 48), t - 1000, 'front')
                w.write(cam, t, store.serialize_cdr(msg, COMPRESSED_IMAGE))
                stamps.append(t - 1000)
            Gizmo = store.types['acme_msgs/msg/Gizmo']
            w.write(gizmo, t + 1, store.serialize_cdr(Gizmo(value=i, name='g'),
                                                      'acme_msgs/msg/Gizmo'))
            w.write(mystery, t + 2, b'\x00\x01\x00\x00\x07\x00\x00\x00')
    return stamps


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_topics_of_missing_types_are_skipped_and_the_camera_plays(tmp_path, echo, storage):
    stamps = write_mixed_bag(tmp_path / 'bag', storage)
    r = run_replay(tmp_path / 'bag', '--settle', 0.5, '--timeout', 20)
    assert r.returncode == 0, r.stderr
    assert [s for _, s, _ in echo.frames] == stamps
    for topic, msgtype in (('/gizmo', 'acme_msgs/msg/Gizmo'),
                           ('/mystery', 'acme_msgs/msg/Mystery')):
        warnings = [line for line in r.stderr.splitlines()
                    if f'warning: skipping {topic} ' in line]
        assert len(warnings) == 1, r.stderr
        assert msgtype in warnings[0] and 'not installed' in warnings[0]
    assert f'{CAMERA}: 5' in r.stderr


def test_a_missing_type_asked_for_by_name_is_an_error(tmp_path):
    write_mixed_bag(tmp_path / 'bag', 'sqlite3', frames=2)
    r = run_replay(tmp_path / 'bag', '--topic', '/gizmo', '--timeout', 5)
    assert r.returncode == 2
    assert 'acme_msgs/msg/Gizmo is not installed' in r.stderr and 'Traceback' not in r.stderr


def test_nothing_playable_is_an_error(tmp_path):
    write_mixed_bag(tmp_path / 'bag', 'mcap', frames=2, camera=False)
    r = run_replay(tmp_path / 'bag', '--timeout', 5)
    assert r.returncode == 2
    assert 'no topic of the bag can be played' in r.stderr


def test_bag_annotation_of_such_a_bag(tmp_path, tiny_onnx_dir, capsys):
    import json

    from qwen_vl_ros.cli.describe import main
    write_mixed_bag(tmp_path / 'bag', 'mcap', frames=3)
    out = tmp_path / 'out.jsonl'
    code = main(['--model-dir', str(tiny_onnx_dir), '--bag', str(tmp_path / 'bag'), '--every',
                 '0', '--out', str(out), '--max-new-tokens', '1', '--greedy'])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d['topic'] for d in lines] == [CAMERA] * 3 and all('text' in d for d in lines)
