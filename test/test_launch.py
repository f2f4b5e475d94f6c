"""launch/describe.launch.py names what exists: package, executable, node name, params file.

Read with ast, so that these checks also run where `launch` and `launch_ros` are not installed
(a clone without ../shared/ros2cli); test_ros2_cli.py and test_managed_node.py run both
launch files with the real `ros2 launch` where they are. The node tests start the console
script with node_harness's launch_arguments(); this module also checks that it produces what
the launch file would.
"""

import ast
import configparser
import os
import sys
from pathlib import Path

import pytest

import node_harness as harness

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'describe.launch.py'
MANAGED_LAUNCH = REPO / 'launch' / 'describe_managed.launch.py'
CONFIG = REPO / 'config' / 'describe.yaml'


def _constants(tree: ast.Module) -> dict:
    """Module-level NAME = 'string' assignments."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = stmt.value.value
    return out


def _value(node, constants):
    """Evaluate a literal, or look up a module constant by name."""
    if isinstance(node, ast.Name):
        return constants[node.id]
    return ast.literal_eval(node)


def _calls(tree, name: str) -> list:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


@pytest.fixture(scope='module')
def launch():
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    return tree, _constants(tree)


def test_launch_file_is_in_launch_ros_form(launch):
    tree, _ = launch
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names}
    assert {'LaunchDescription', 'DeclareLaunchArgument', 'LaunchConfiguration',
            'Node'} <= names
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)


def test_node_action_names_package_executable_and_node(launch):
    tree, consts = launch
    (node,) = _calls(tree, 'Node')
    assert _value({k.arg: k.value for k in node.keywords}['executable'], consts) \
        == harness.EXECUTABLE == 'describe_node'
    # the other arguments: node_options(), shared with describe_managed.launch.py
    (options,) = _calls(tree, 'dict')
    kw = {k.arg: k.value for k in options.keywords}
    assert _value(kw['package'], consts) == harness.PACKAGE == 'qwen_vl_ros'
    assert _value(kw['name'], consts) == harness.NODE_NAME == 'qwen_vl'
    assert {'namespace', 'parameters', 'remappings'} <= set(kw)
    remapped = [_value(t.elts[0], consts) for t in kw['remappings'].elts]
    assert remapped == ['image', 'image/compressed']


def test_launch_arguments(launch):
    tree, _ = launch
    declared = {}
    for call in _calls(tree, 'DeclareLaunchArgument'):
        kw = {k.arg: k.value for k in call.keywords}
        assert 'description' in kw
        declared[ast.literal_eval(call.args[0])] = kw['default_value']
    assert set(declared) == {'params_file', 'namespace', 'model_dir', 'backend', 'image_topic',
                             'cameras', 'image_topics', 'respawn', 'respawn_delay',
                             'npu_provider', 'npu_device'}
    assert ast.literal_eval(declared['respawn']) == 'false'
    assert float(ast.literal_eval(declared['respawn_delay'])) > 0
    assert ast.literal_eval(declared['image_topic']) == 'image'


def test_default_params_file_is_the_installed_config(launch):
    tree, consts = launch
    (share,) = _calls(tree, 'get_package_share_directory')
    assert _value(share.args[0], consts) == harness.PACKAGE
    assert consts['PARAMS_FILE'] == harness.PARAMS_FILE == CONFIG.name
    text = LAUNCH.read_text()
    assert "/config/{PARAMS_FILE}'" in text


def _setup_kwargs() -> dict:
    tree = ast.parse((REPO / 'setup.py').read_text())
    (call,) = [c for c in _calls(tree, 'setup')]
    return {k.arg: k.value for k in call.keywords}


def test_setup_py_declares_the_executable_and_installs_launch_and_config():
    kw = _setup_kwargs()
    scripts = ast.literal_eval(kw['entry_points'])['console_scripts']
    assert f'{harness.EXECUTABLE} = qwen_vl_ros.ros.node:main' in scripts
    data = ast.unparse(kw['data_files'])
    assert "'launch/*.launch.py'" in data and "'config/*.yaml'" in data
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    assert cfg['install']['install_scripts'] == f'$base/lib/{harness.PACKAGE}'


def test_managed_launch_file_starts_the_managed_executable():
    tree = ast.parse(MANAGED_LAUNCH.read_text())
    consts = _constants(tree)
    (node,) = _calls(tree, 'LifecycleNode')
    kw = {k.arg: k.value for k in node.keywords}
    executable = _value(kw['executable'], consts)
    scripts = ast.literal_eval(_setup_kwargs()['entry_points'])['console_scripts']
    assert f'{executable} = qwen_vl_ros.ros.managed:main' in scripts
    assert "with_name('describe.launch.py')" in MANAGED_LAUNCH.read_text()


def test_every_console_script_is_linked_for_ros2_run():
    """Check that make install links each console script into lib/qwen_vl_ros (ros2 run)."""
    scripts = ast.literal_eval(_setup_kwargs()['entry_points'])['console_scripts']
    libexec = Path(sys.prefix) / 'lib' / harness.PACKAGE
    for line in scripts:
        name = line.split('=')[0].strip()
        path = libexec / name
        assert path.is_file() and os.access(path, os.X_OK), f'{path} missing: run make install'
        if path.is_symlink():
            assert path.resolve() == (Path(sys.prefix) / 'bin' / name).resolve()


def test_the_entry_point_imports():
    from qwen_vl_ros.ros.node import main
    assert callable(main)


def test_installed_share_directory_has_the_current_files():
    pytest.importorskip('ament_index_python')
    share = harness.share_dir()
    for installed, source in ((share / 'launch' / LAUNCH.name, LAUNCH),
                              (share / 'launch' / MANAGED_LAUNCH.name, MANAGED_LAUNCH),
                              (share / 'config' / CONFIG.name, CONFIG)):
        assert installed.is_file(), f'{installed} missing: run make install'
        assert installed.read_bytes() == source.read_bytes(), f'{installed} is stale'
    assert (share / 'package.xml').is_file()
    assert harness.executable().is_file()


def test_harness_passes_what_the_launch_file_would():
    args = harness.launch_arguments(namespace='robot1', model_dir='/m', backend='onnxruntime',
                                    image_topic='/cam/image')
    joined = ' '.join(args)
    assert args[0] == '--ros-args'
    assert f'-r __node:={harness.NODE_NAME}' in joined
    assert '-r __ns:=/robot1' in joined
    assert f'--params-file {harness.share_dir() / "config" / CONFIG.name}' in joined
    assert '-p model_dir:=/m' in joined and '-p backend:=onnxruntime' in joined
    assert '-r image:=/cam/image' in joined
    assert '-r image/compressed:=/cam/image/compressed' in joined
    # empty launch arguments leave the params file alone, as the launch file does
    bare = ' '.join(harness.launch_arguments())
    assert 'model_dir' not in bare and 'backend' not in bare and '__ns' not in bare
