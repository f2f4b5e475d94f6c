"""Start the qwen_vl node (describe_node) with the parameters of config/describe.yaml.

    ros2 launch qwen_vl_ros describe.launch.py model_dir:=/opt/models/qwen2.5-vl \
        image_topic:=/camera/color/image_raw [namespace:=robot1] [backend:=axengine] \
        [params_file:=/path/to/my.yaml]

model_dir and backend, when given, override the params file. image_topic remaps both `image`
and `image/compressed` (to <image_topic>/compressed), so image_transport:=compressed in the params
file works with the same argument. When the node exits (e.g. the model does not load) the launch
ends with it. describe_managed.launch.py reuses this file's arguments and node options.
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
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera topic (sensor_msgs/Image); its /compressed '
                                          'sub-topic is used when image_transport is compressed'),
    ]


def node_options(context) -> dict:
    """Node action arguments of both launch files (all but the executable).

    model_dir and backend override the params file only when given. The node's exit ends the
    launch (a node that cannot load its model must not leave a launch that looks alive).
    """
    overrides = {}
    for name in ('model_dir', 'backend'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    image_topic = LaunchConfiguration('image_topic').perform(context)
    return dict(
        package=PACKAGE,
        name=NODE_NAME,
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[('image', image_topic),
                    ('image/compressed', image_topic + '/compressed')],
        output='screen',
        emulate_tty=True,
        on_exit=_end_launch,
    )


def _end_launch(event, context):
    """End the launch when the node exits, unless it is already ending (Ctrl-C).

    A second shutdown of a launch that has a LifecycleNode fails in launch_ros ("Cannot
    shutdown a ROS adapter that is not running") and makes `ros2 launch` exit 1. (launch runs
    on_exit on every exit: a respawning node must not end the launch here.)
    """
    if context.is_shutdown:
        return None
    return [Shutdown(reason=f'{NODE_NAME} exited with code {event.returncode}')]


def _node(context):
    return [Node(executable=EXECUTABLE, **node_options(context))]


def generate_launch_description():
    return LaunchDescription(launch_arguments() + [OpaqueFunction(function=_node)])
