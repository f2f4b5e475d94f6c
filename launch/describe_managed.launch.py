"""Start the managed qwen_vl node (describe_managed_node), configure it and activate it.

    ros2 launch qwen_vl_ros describe_managed.launch.py model_dir:=/opt/models/qwen2.5-vl \
        image_topic:=/camera/color/image_raw [namespace:=robot1] [autostart:=false]

The same arguments as describe.launch.py (whose definitions this file loads), plus autostart:
true (default) = configure at once (load the model), then activate when that first configure
succeeded, with launch_ros' lifecycle events (later transitions are left to whoever asks for
them); false = leave the node unconfigured for a lifecycle manager or `ros2 lifecycle set`.
"""

import importlib.util
from pathlib import Path

import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, \
    RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

EXECUTABLE = 'describe_managed_node'


def _describe_launch():
    """describe.launch.py, beside this file (in the source tree or in share/), as a module."""
    path = Path(__file__).with_name('describe.launch.py')
    spec = importlib.util.spec_from_file_location('qwen_vl_describe_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _managed_node(context):
    describe = _describe_launch()
    node = LifecycleNode(executable=EXECUTABLE, **describe.node_options(context))
    autostart = IfCondition(LaunchConfiguration('autostart'))

    def change(transition, **kwargs):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition), **kwargs)

    activate_when_configured = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=node, start_state='configuring',
                          goal_state='inactive', handle_once=True,
                          entities=[change(lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE)]),
        condition=autostart)
    configure = change(lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE, condition=autostart)
    return [activate_when_configured, node, configure]


def generate_launch_description():
    return LaunchDescription(_describe_launch().launch_arguments() + [
        DeclareLaunchArgument('autostart', default_value='true',
                              description='true: configure, then activate; false: leave the '
                                          'node unconfigured'),
        OpaqueFunction(function=_managed_node),
    ])
