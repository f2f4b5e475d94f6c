"""Start the qwen_vl node (describe_node) with the parameters of config/describe.yaml.

    ros2 launch qwen_vl_ros describe.launch.py model_dir:=/opt/models/qwen2.5-vl \
        image_topic:=/camera/color/image_raw [namespace:=robot1] [backend:=axengine] \
        [params_file:=/path/to/my.yaml] [respawn:=true] [respawn_delay:=2.0]

model_dir and backend, when given, override the params file. image_topic remaps both `image`
and `image/compressed` (to <image_topic>/compressed), so image_transport:=compressed in the params
file works with the same argument. respawn:=true starts the node again respawn_delay seconds
after it exits by itself (a runtime hang exits with code 3 after hang_exit_s); a stop of the
launch (Ctrl-C) is not followed by a respawn. Both are plain values, performed here, so that the
file also works with Humble's launch_ros (whose Node takes respawn as a bool, not a substitution).
"""

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'qwen_vl_ros'
EXECUTABLE = 'describe_node'
NODE_NAME = 'qwen_vl'
PARAMS_FILE = 'describe.yaml'


def _node(context):
    """Build the Node action; model_dir and backend override the params file only when given."""
    overrides = {}
    for name in ('model_dir', 'backend'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    image_topic = LaunchConfiguration('image_topic').perform(context)
    respawn = LaunchConfiguration('respawn').perform(context).strip().lower()
    if respawn not in ('true', 'false'):
        raise ValueError(f'respawn must be true or false, got {respawn!r}')
    respawn_delay = float(LaunchConfiguration('respawn_delay').perform(context))
    return [Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[('image', image_topic),
                    ('image/compressed', image_topic + '/compressed')],
        output='screen',
        emulate_tty=True,
        respawn=respawn == 'true',
        respawn_delay=respawn_delay,
    )]


def generate_launch_description():
    default_params = f'{get_package_share_directory(PACKAGE)}/config/{PARAMS_FILE}'
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the node parameters'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and of its topics'),
        DeclareLaunchArgument('model_dir', default_value='',
                              description='model directory; empty = the params file value'),
        DeclareLaunchArgument('backend', default_value='',
                              description='auto | axengine | onnxruntime; empty = the params '
                                          'file value'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera topic (sensor_msgs/Image); its /compressed '
                                          'sub-topic is used when image_transport is compressed'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='true: start the node again when it exits by itself '
                                          '(e.g. exit code 3 after a runtime hang)'),
        DeclareLaunchArgument('respawn_delay', default_value='2.0',
                              description='seconds to wait before a respawn'),
        OpaqueFunction(function=_node),
    ])
