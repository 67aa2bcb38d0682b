"""Launch the mtdp_ros perception node, optionally with RViz.

Example::

    ros2 launch mtdp_ros perception.launch.py image_topic:=/camera/color/image_raw
        camera_info_topic:=/camera/color/camera_info device:=cuda use_rviz:=true

Several cameras on one engine (topics ``front/image``, ``front/depth``...)::

    ros2 launch mtdp_ros perception.launch.py cameras:=[front,left]

Arguments left empty keep the value of ``params_file`` (or the node's default).
"""

import os

from launch import LaunchDescription
import launch.logging
from launch.actions import (DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mtdp_ros.ros.launch_support import (fastdds_transports, find_rviz2,
                                         node_parameters_from_arguments, parse_bool,
                                         rviz_arguments, rviz_namespace,
                                         stop_launch_on_failure)

PACKAGE = 'mtdp_ros'
# (name, default, description): the launch arguments of this file.
ARGUMENTS = (
    ('image_topic', '/camera/image_raw',
     'Camera image topic (sensor_msgs/Image); <image_topic>/compressed is used with '
     'input.transport compressed.'),
    ('camera_info_topic', '/camera/camera_info', 'CameraInfo topic of that camera.'),
    ('cameras', '',
     'Several cameras on one engine, e.g. [front,left]: each subscribes <name>/image and '
     '<name>/camera_info and publishes under <name>/ (remap those per camera); RViz shows '
     'the first (empty: one camera on image_topic).'),
    ('namespace', '', 'Namespace of the node and its output topics.'),
    ('node_name', 'mtdp_perception', 'Name of the node.'),
    ('params_file', '',
     'YAML parameters file, e.g. <share>/mtdp_ros/config/mlore.yaml (empty: none).'),
    ('preset', '',
     "model.preset: 'default', 'default_taskdiffusion', a preset name, a .safetensors "
     'checkpoint or a model config file (empty: params_file / default).'),
    ('checkpoint', '', "model.checkpoint: weights overriding the preset's (empty: none)."),
    ('tasks', '', 'Comma-separated tasks, e.g. semseg,depth (empty: all of the model).'),
    ('steps', '', 'diffusion.steps of a TaskDiffusion model (empty or 0: trained steps).'),
    ('device', '', 'engine.device: auto, cuda or cpu (empty: params_file / auto).'),
    ('input_reliability', '',
     "Reliability of the image and camera_info subscriptions: 'best_effort' for a "
     "best-effort camera, 'reliable' (empty: the default, reliable, or params_file's "
     'qos_overrides./<topic>.subscription.reliability; README, Transport and QoS).'),
    ('autostart', 'true',
     'Node parameter autostart: true configures and activates the (lifecycle) node at '
     'start-up; false leaves it unconfigured for a lifecycle manager.'),
    ('use_rviz', 'false', 'Start RViz with rviz/perception.rviz (skipped with a warning '
     'where rviz2 is not installed).'),
    ('fixed_frame', 'camera_optical_frame', "RViz fixed frame: the camera's frame_id."),
    ('fastdds_transports', 'LARGE_DATA',
     'FASTDDS_BUILTIN_TRANSPORTS of the launched processes (Fast DDS): LARGE_DATA (TCP '
     'and shared memory for camera-sized messages, measured in README, Transport and QoS), '
     'or empty to keep the environment. A variable already set is kept.'),
)


def package_share():
    """The installed share directory, or the source tree when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(PACKAGE)
    except Exception:  # noqa: B902 - not installed: use the tree this file lies in
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def argument_values(context):
    """The evaluated launch arguments of ARGUMENTS (name -> text)."""
    return {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}


def launch_setup(context, *args, **kwargs):
    """The node (and RViz) for the evaluated arguments; a bad argument stops the launch.

    The arguments are checked before any process starts, so a rejected value leaves
    nothing running.
    """
    values = argument_values(context)
    overrides = node_parameters_from_arguments(values)
    parameters = []
    if values['params_file'].strip():
        parameters.append(values['params_file'].strip())
    parameters.append(overrides)
    image_topic = values['image_topic']
    actions = []
    transports = fastdds_transports(values['fastdds_transports'], os.environ)
    if transports:
        actions.append(SetEnvironmentVariable('FASTDDS_BUILTIN_TRANSPORTS', transports))
    node = Node(
        package=PACKAGE, executable='perception_node',
        name=values['node_name'], namespace=values['namespace'],
        parameters=parameters, output='screen', emulate_tty=True,
        remappings=[('image', image_topic),
                    ('image/compressed', image_topic.rstrip('/') + '/compressed'),
                    ('camera_info', values['camera_info_topic'])])
    # A node that fails (bad parameters, no CUDA...) ends the launch with exit code 1.
    actions += [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                         on_exit=stop_launch_on_failure))]
    if parse_bool('use_rviz', values['use_rviz']):
        if find_rviz2() is None:
            launch.logging.get_logger('perception.launch').warning(
                'use_rviz: rviz2 is not installed (no rviz2 package on AMENT_PREFIX_PATH); '
                'running without RViz')
        else:
            rviz_args, rviz_remappings = rviz_arguments(
                os.path.join(package_share(), 'rviz', 'perception.rviz'),
                rviz_namespace(values['namespace'], overrides.get('cameras')),
                values['fixed_frame'].strip())
            actions.append(Node(package='rviz2', executable='rviz2', name='rviz2',
                                arguments=rviz_args, remappings=rviz_remappings,
                                output='log'))
    return actions


def generate_launch_description():
    """Launch description: the arguments above, then the node (and RViz)."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=launch_setup)])
