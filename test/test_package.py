"""The ROS packaging: package.xml files, what the install puts into share/, the interfaces."""
import ast
import configparser
import os
import runpy
import sys

import pytest
import setuptools
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from catkin_pkg.package import parse_package

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'qwen_vl_ros'

# Python modules of system libraries -> their rosdep keys in package.xml.
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml'}
# ROS packages that are not installable here (PLATFORM.md) but that launch files import.
ROS_ONLY_ON_ROBOTS = {'launch', 'launch_ros'}
# Parts of the package that are not the node: they declare their needs in setup.py extras.
NOT_RUN_BY_THE_NODE = {'export'}


def declared_deps(pkg) -> set:
    return {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.build_export_depends +
            pkg.buildtool_depends}


def setup_kwargs() -> dict:
    """Run setup.py with setuptools.setup replaced, to learn what it declares."""
    captured = {}
    real_setup = setuptools.setup
    cwd = os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO)  # setup.py globs relative paths
        runpy.run_path(os.path.join(REPO, 'setup.py'), run_name='__main__')
    finally:
        setuptools.setup = real_setup
        os.chdir(cwd)
    return captured


def imported_top_modules(paths) -> set:
    """Return the top-level modules that the Python files under paths import (absolute ones)."""
    found = set()
    for path in paths:
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != '__pycache__' and
                       os.path.relpath(os.path.join(root, d), path) not in NOT_RUN_BY_THE_NODE]
            for name in files:
                if not name.endswith('.py'):
                    continue
                with open(os.path.join(root, name), 'rb') as f:
                    tree = ast.parse(f.read(), os.path.join(root, name))
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        found.update(a.name.split('.')[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        found.add(node.module.split('.')[0])
    return found


# --- package.xml ---------------------------------------------------------------------------------

def test_package_xml_parses():
    pkg = parse_package(os.path.join(REPO, 'package.xml'))
    assert pkg.name == PACKAGE
    assert pkg.package_format == 3
    assert pkg.get_build_type() == 'ament_python'
    assert pkg.version == setup_kwargs()['version']
    deps = declared_deps(pkg)
    for name in ('rclpy', 'std_msgs', 'sensor_msgs', 'qwen_vl_interfaces', 'ament_index_python',
                 'python3-numpy', 'python3-opencv'):
        assert name in deps, f'package.xml lacks a dependency on {name}'
    assert 'launch_ros' in {d.name for d in pkg.exec_depends}
    assert {d.name for d in pkg.test_depends} >= {'ament_flake8', 'ament_pep257',
                                                 'python3-pytest'}


def test_package_xml_names_every_ros_package_the_code_imports():
    pkg = parse_package(os.path.join(REPO, 'package.xml'))
    deps = declared_deps(pkg)
    prefix = get_package_prefix('rclpy')
    index = os.path.join(prefix, 'share', 'ament_index', 'resource_index', 'packages')
    ros_packages = set(os.listdir(index)) | ROS_ONLY_ON_ROBOTS
    modules = imported_top_modules([os.path.join(REPO, PACKAGE), os.path.join(REPO, 'launch')])
    missing = sorted(
        ROSDEP_KEYS.get(m, m) for m in modules - {PACKAGE}
        if (m in ros_packages or m in ROSDEP_KEYS) and ROSDEP_KEYS.get(m, m) not in deps)
    assert not missing, f'the code imports {missing} but package.xml does not declare them'


def test_interfaces_package_xml():
    pkg = parse_package(os.path.join(REPO, 'qwen_vl_interfaces', 'package.xml'))
    assert pkg.name == 'qwen_vl_interfaces'
    assert pkg.package_format == 3
    assert pkg.get_build_type() == 'ament_cmake'
    assert 'rosidl_interface_packages' in [g.name for g in pkg.member_of_groups]
    deps = declared_deps(pkg)
    assert {'ament_cmake', 'rosidl_default_generators', 'std_msgs', 'sensor_msgs'} <= deps
    assert 'rosidl_default_runtime' in {d.name for d in pkg.exec_depends}


def test_setup_cfg_puts_scripts_where_ros2_run_looks():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(os.path.join(REPO, 'setup.cfg'))
    assert cfg['develop']['script_dir'] == '$base/lib/' + PACKAGE
    assert cfg['install']['install_scripts'] == '$base/lib/' + PACKAGE


# --- the installed package ---------------------------------------------------------------------

def installed_data_files():
    """Yield (repo file, installed path) for every data file that setup.py declares."""
    prefix = get_package_prefix(PACKAGE)
    for dest, files in setup_kwargs()['data_files']:
        for src in files:
            yield os.path.join(REPO, src), os.path.join(prefix, dest, os.path.basename(src))


def test_installed_share_directory_has_package_xml():
    share = get_package_share_directory(PACKAGE)
    with open(os.path.join(share, 'package.xml')) as a, \
            open(os.path.join(REPO, 'package.xml')) as b:
        assert a.read() == b.read(), 'installed package.xml is stale: run make install'


def test_installed_data_files_match_the_repository():
    for src, dst in installed_data_files():
        assert os.path.isfile(dst), f'{src} is declared in setup.py but not installed at {dst}'
        with open(src, 'rb') as a, open(dst, 'rb') as b:
            assert a.read() == b.read(), f'{dst} is stale: run make install'


@pytest.mark.parametrize('subdir, pattern', [('launch', '.launch.py'), ('config', '.yaml')])
def test_launch_and_config_are_installed(subdir, pattern):
    declared = [src for src, _ in installed_data_files()
                if os.path.basename(os.path.dirname(src)) == subdir and src.endswith(pattern)]
    if not declared:
        pytest.skip(f'no {subdir}/*{pattern} in the repository yet')
    share = get_package_share_directory(PACKAGE)
    for src in declared:
        assert os.path.isfile(os.path.join(share, subdir, os.path.basename(src)))


def test_console_scripts_are_installed():
    scripts = [e.split('=')[0].strip()
               for e in setup_kwargs()['entry_points']['console_scripts']]
    assert 'describe_node' in scripts
    # pip: bin/ (make install links them into lib/qwen_vl_ros); an old pip's setup.py install
    # (and colcon): lib/qwen_vl_ros/ directly, as setup.cfg says
    dirs = (os.path.dirname(sys.executable), os.path.join(sys.prefix, 'lib', PACKAGE))
    for name in scripts:
        assert any(os.path.isfile(os.path.join(d, name)) for d in dirs), \
            f'{name} not installed in {dirs}'


# --- the interfaces ----------------------------------------------------------------------------

DESCRIPTION_FIELDS = {
    'header': 'std_msgs/Header', 'prompt': 'string', 'text': 'string', 'finish_reason': 'string',
    'prompt_tokens': 'uint32', 'generated_tokens': 'uint32', 'preprocess_ms': 'float',
    'vision_ms': 'float', 'time_to_first_token_ms': 'float', 'decode_ms': 'float',
    'tokens_per_second': 'float', 'trigger': 'string',
    'choices': 'sequence<string>', 'choice_index': 'int32',
}


def test_description_message():
    from qwen_vl_interfaces.msg import Description
    assert Description.get_fields_and_field_types() == DESCRIPTION_FIELDS  # float = float32


def test_describe_service():
    from qwen_vl_interfaces.srv import Describe
    assert Describe.Request.get_fields_and_field_types() == {
        'prompt': 'string', 'image': 'sensor_msgs/Image', 'max_new_tokens': 'uint32',
        'choices': 'sequence<string>', 'json_schema': 'string', 'regex': 'string',
        'prompts': 'sequence<string>', 'camera': 'string'}
    assert Describe.Response.get_fields_and_field_types() == {
        'success': 'boolean', 'message': 'string',
        'description': 'qwen_vl_interfaces/Description',
        'descriptions': 'sequence<qwen_vl_interfaces/Description>'}
    request = Describe.Request()
    assert request.prompt == '' and request.image.width == 0 and request.max_new_tokens == 0
    assert list(request.prompts) == []


def test_describe_action():
    from qwen_vl_interfaces.action import Describe
    from qwen_vl_interfaces.srv import Describe as DescribeService
    # the goal asks what the service request asks; the result answers what its response does
    assert Describe.Goal.get_fields_and_field_types() == \
        DescribeService.Request.get_fields_and_field_types()
    assert Describe.Result.get_fields_and_field_types() == \
        DescribeService.Response.get_fields_and_field_types()
    assert Describe.Feedback.get_fields_and_field_types() == {
        'text': 'string', 'delta': 'string', 'generated_tokens': 'uint32',
        'prompt_index': 'uint32'}


def test_detect_service():
    """srv/Detect: built where vision_msgs is (its answer is vision_msgs' Detection2DArray)."""
    pytest.importorskip('vision_msgs.msg', reason='vision_msgs is not installed: srv/Detect is '
                        'not built (make venv builds it from ../shared/ros_vendor)')
    from qwen_vl_interfaces.srv import Detect
    assert Detect.Request.get_fields_and_field_types() == {
        'labels': 'sequence<string>', 'prompt': 'string', 'image': 'sensor_msgs/Image',
        'max_new_tokens': 'uint32', 'camera': 'string'}
    assert Detect.Response.get_fields_and_field_types() == {
        'success': 'boolean', 'message': 'string',
        'detections': 'vision_msgs/Detection2DArray', 'text': 'string'}


@pytest.mark.parametrize('path', ['msg/Description.msg', 'srv/Describe.srv',
                                  'srv/Detect.srv', 'action/Describe.action'])
def test_every_interface_field_is_documented(path):
    with open(os.path.join(REPO, 'qwen_vl_interfaces', path)) as f:
        lines = [line.strip() for line in f]
    for i, line in enumerate(lines):
        if line and not line.startswith('#') and line != '---':
            assert i > 0 and lines[i - 1].startswith('#'), \
                f'{path}: field {line!r} has no comment line above it'


# --- the test environment itself ---------------------------------------------------------------

def test_dds_stays_on_loopback():
    env = os.environ
    hint = 'run the tests with make test or scripts/with_ros_env.sh (scripts/ros_env.sh)'
    assert env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST', hint
    assert env.get('ROS_LOCALHOST_ONLY') == '1', hint
    assert env.get('ROS_DOMAIN_ID', '').isdigit(), hint
