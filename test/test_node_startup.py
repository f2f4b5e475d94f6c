"""describe_node start-up failures: a broken model directory, bad parameters (exit codes)."""

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')

from node_harness import launch_arguments, run_node_once  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def one_line_with(output: str, *words) -> str:
    lines = [ln for ln in output.splitlines() if all(w in ln for w in words)]
    assert lines, f'no line with {words} in:\n{output}'
    return lines[0]


def test_empty_model_dir_exits_nonzero_with_the_reason_in_one_line(tmp_path):
    model = tmp_path / 'empty_model'
    model.mkdir()
    rc, out = run_node_once(launch_arguments(model_dir=str(model), threads=1), tmp_path / 'log',
                            timeout=60)
    assert rc == 1, out
    line = one_line_with(out, '[ERROR]', 'cannot load the model', str(model))
    assert 'ModelDirError' in line


def test_corrupt_model_file_exits_nonzero(tiny_onnx_dir, tmp_path):
    model = tmp_path / 'corrupt_model'
    model.mkdir()
    for f in tiny_onnx_dir.iterdir():
        (model / f.name).symlink_to(f)
    (model / 'qwen2_5_vl_post.onnx').unlink()
    (model / 'qwen2_5_vl_post.onnx').write_bytes(b'this is not an onnx file')
    rc, out = run_node_once(launch_arguments(model_dir=str(model), threads=1), tmp_path / 'log',
                            timeout=60)
    assert rc == 1, out
    one_line_with(out, '[ERROR]', 'cannot load the model', 'qwen2_5_vl_post.onnx')


@pytest.mark.parametrize('params,words', [
    ({}, 'model_dir is not set'),
    ({'model_dir': '/m', 'backend': 'tensorrt'}, 'backend must be one of'),
    ({'model_dir': '/m', 'period_s': -1.0}, 'period_s'),
    ({'model_dir': '/m', 'period_s': 2}, 'period_s'),          # an int where a float belongs
])
def test_bad_parameters_exit_2_with_the_reason(tmp_path, params, words):
    rc, out = run_node_once(launch_arguments(**params), tmp_path / 'log', timeout=60)
    assert rc == 2, out
    one_line_with(out, 'bad parameters', words)
