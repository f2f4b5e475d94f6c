"""Start the qwen_vl node (describe_node) with the parameters of config/describe.yaml.

    ros2 launch qwen_vl_ros describe.launch.py model_dir:=/opt/models/qwen2.5-vl \
        image_topic:=/camera/color/image_raw [namespace:=robot1] [backend:=axengine] \
        [npu_provider:=AXCLRTExecutionProvider] [npu_device:=0] \
        [params_file:=/path/to/my.yaml] [respawn:=true] [respawn_delay:=2.0]

    ros2 launch qwen_vl_ros describe.launch.py model_dir:=/opt/models/qwen2.5-vl \
        cameras:=front,rear image_topics:=/front/image_raw,/rear/image_raw \
        params_file:=$(ros2 pkg prefix qwen_vl_ros)/share/qwen_vl_ros/config/cameras.yaml

model_dir, backend, npu_provider and npu_device, when given, override the params file.
image_topic remaps both `image` and `image/compressed` (to <image_topic>/compressed), so
image_transport:=compressed in the params file works with the same argument. cameras
(comma-separated names) sets the parameter cameras; image_topics then gives each camera's topic
in the same order (remapping <camera>/image and <camera>/image/compressed), and a params file
may hold a block per camera (config/cameras.yaml). respawn:=true starts the node again
respawn_delay seconds after it exits by itself (a runtime hang exits with code 3 after
hang_exit_s); a stop of the launch (Ctrl-C) is not followed by a respawn. Both are plain
values, performed here, so that the file also works with Humble's launch_ros (whose Node takes
respawn as a bool, not a substitution).
Without respawn, the node's exit (e.g. the model does not load) ends the launch.
describe_managed.launch.py reuses this file's arguments and node options.
"""

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'qwen_vl_ros'
EXECUTABLE = 'describe_node'
NODE_NAME = 'qwen_vl'
PARAMS_FILE = 'describe.yaml'


def launch_arguments() -> list:
    """Return the launch arguments of both launch files."""
    default_params = f'{get_package_share_directory(PACKAGE)}/config/{PARAMS_FILE}'
    return [
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the node parameters'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and of its topics'),
        DeclareLaunchArgument('model_dir', default_value='',
                              description='model directory; empty = the params file value'),
        DeclareLaunchArgument('backend', default_value='',
                              description='auto | axengine | onnxruntime; empty = the params '
                                          'file value'),
        DeclareLaunchArgument('npu_provider', default_value='',
                              description='auto | AxEngineExecutionProvider | '
                                          'AXCLRTExecutionProvider (M.2 card); empty = the '
                                          'params file value'),
        DeclareLaunchArgument('npu_device', default_value='',
                              description='M.2 card index; empty = the params file value'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera topic (sensor_msgs/Image); its /compressed '
                                          'sub-topic is used when image_transport is compressed'),
        DeclareLaunchArgument('cameras', default_value='',
                              description='comma-separated camera names (parameter cameras); '
                                          'empty = the params file value (default: one '
                                          'camera on image_topic)'),
        DeclareLaunchArgument('image_topics', default_value='',
                              description='with cameras: comma-separated image topics, one per '
                                          'camera in the same order'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='true: start the node again when it exits by itself '
                                          '(e.g. exit code 3 after a runtime hang)'),
        DeclareLaunchArgument('respawn_delay', default_value='2.0',
                              description='seconds to wait before a respawn'),
    ]


def node_options(context) -> dict:
    """Node action arguments of both launch files (all but the executable).

    model_dir, backend, npu_provider and npu_device override the params file only when given.
    Without respawn the node's exit ends the launch (a node that cannot load its model must not
    leave a launch that looks alive); with respawn, launch runs on_exit before every respawn, so
    there is none.
    """
    overrides = {}
    for name in ('model_dir', 'backend', 'npu_provider', 'npu_device'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = int(value) if name == 'npu_device' else value
    image_topic = LaunchConfiguration('image_topic').perform(context)
    respawn = LaunchConfiguration('respawn').perform(context).strip().lower()
    if respawn not in ('true', 'false'):
        raise ValueError(f'respawn must be true or false, got {respawn!r}')
    respawn_delay = float(LaunchConfiguration('respawn_delay').perform(context))
    cameras = _names(LaunchConfiguration('cameras').perform(context))
    if cameras:
        overrides['cameras'] = cameras
    options = dict(
        package=PACKAGE,
        name=NODE_NAME,
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[('image', image_topic),
                    ('image/compressed', image_topic + '/compressed')],
        output='screen',
        emulate_tty=True,
        respawn=respawn == 'true',
        respawn_delay=respawn_delay,
        on_exit=None if respawn == 'true' else _end_launch,
    )
    options['remappings'] += _camera_remaps(
        cameras, _names(LaunchConfiguration('image_topics').perform(context)))
    return options


def _names(text: str) -> list:
    """'front, rear' or '[front, rear]' -> ['front', 'rear']."""
    return [n.strip() for n in text.strip().strip('[]').split(',') if n.strip()]


def _camera_remaps(cameras: list, topics: list) -> list:
    """<camera>/image (and /compressed) -> its topic, for cameras and image_topics in order."""
    if topics and len(topics) != len(cameras):
        raise ValueError(f'image_topics names {len(topics)} topic(s) for {len(cameras)} '
                         f'camera(s) ({", ".join(cameras) or "cameras not given"})')
    remaps = []
    for camera, topic in zip(cameras, topics):
        remaps += [(f'{camera}/image', topic), (f'{camera}/image/compressed',
                                                topic + '/compressed')]
    return remaps


def _end_launch(event, context):
    """End the launch when the node exits, unless it is already ending (Ctrl-C).

    A second shutdown of a launch that has a LifecycleNode fails in launch_ros ("Cannot
    shutdown a ROS adapter that is not running") and makes `ros2 launch` exit 1.
    """
    if context.is_shutdown:
        return None
    return [Shutdown(reason=f'{NODE_NAME} exited with code {event.returncode}')]


def _node(context):
    return [Node(executable=EXECUTABLE, **node_options(context))]


def generate_launch_description():
    return LaunchDescription(launch_arguments() + [OpaqueFunction(function=_node)])
