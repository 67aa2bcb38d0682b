"""Launch the demo: demo camera + perception node + RViz.

Examples::

    ros2 launch mtdp_ros demo.launch.py                      # synthetic scenes, RViz
    ros2 launch mtdp_ros demo.launch.py source:=/path/to/video.mp4 device:=cuda
"""

import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mtdp_ros.ros.launch_support import (fastdds_transports, node_parameters_from_arguments,
                                         parse_number, stop_launch_on_failure)

PACKAGE = 'mtdp_ros'
ARGUMENTS = (
    ('source', 'synthetic',
     "Camera source: 'synthetic', 'pattern', a folder of images or a video file."),
    ('rate', '10.0', 'Camera frame rate (Hz).'),
    ('width', '640', 'Camera width.'),
    ('height', '480', 'Camera height.'),
    ('namespace', 'mtdp_demo', 'Namespace of the camera and the node.'),
    ('preset', 'default', 'model.preset of the node.'),
    ('checkpoint', '', 'model.checkpoint of the node (empty: none).'),
    ('tasks', '', 'Comma-separated tasks (empty: all).'),
    ('steps', '', 'diffusion.steps (empty: trained steps).'),
    ('device', 'auto', 'engine.device: auto, cuda or cpu.'),
    ('autostart', 'true', 'Node parameter autostart (false: a lifecycle manager '
     'configures and activates the node).'),
    ('fastdds_transports', 'LARGE_DATA',
     'FASTDDS_BUILTIN_TRANSPORTS of the camera and the node (empty: keep the environment; '
     'a variable already set is kept).'),
    ('use_rviz', 'true', 'Start RViz (skipped with a warning where rviz2 is not '
     'installed).'),
)


def launch_directory():
    """Directory of the installed launch files, or of this file in a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory(PACKAGE), 'launch')
    except Exception:  # noqa: B902 - not installed: use the tree this file lies in
        return os.path.dirname(os.path.abspath(__file__))


def launch_setup(context, *args, **kwargs):
    """The camera and the perception launch, after the arguments are checked.

    Checking here (not only in perception.launch.py) means a rejected argument stops the
    launch before the camera starts, so nothing is left running.
    """
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    node_parameters_from_arguments(values)
    rate = parse_number('rate', values['rate'], float, 0.1, 1000.0)
    width = parse_number('width', values['width'], int, 0, 16384)
    height = parse_number('height', values['height'], int, 0, 16384)
    # The camera's transports must be the node's: set before the camera starts.
    transports = fastdds_transports(values['fastdds_transports'], os.environ)
    environment = ([SetEnvironmentVariable('FASTDDS_BUILTIN_TRANSPORTS', transports)]
                   if transports else [])
    camera = Node(
        package=PACKAGE, executable='demo_camera', name='demo_camera',
        namespace=values['namespace'], output='screen',
        parameters=[{'source': values['source'],
                     'rate': rate, 'width': width, 'height': height,
                     'frame_id': 'camera_optical_frame'}])
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_directory(),
                                                   'perception.launch.py')),
        launch_arguments={
            'image_topic': 'image', 'camera_info_topic': 'camera_info',
            'namespace': values['namespace'], 'preset': values['preset'],
            'checkpoint': values['checkpoint'], 'tasks': values['tasks'],
            'steps': values['steps'], 'device': values['device'],
            'autostart': values['autostart'], 'use_rviz': values['use_rviz'],
            'fixed_frame': 'camera_optical_frame',
            'fastdds_transports': values['fastdds_transports'],
        }.items())
    # The camera failing (an unreadable video...) ends the demo with exit code 1, as the
    # node does (perception.launch.py).
    on_camera_exit = RegisterEventHandler(OnProcessExit(target_action=camera,
                                                        on_exit=stop_launch_on_failure))
    return environment + [camera, on_camera_exit, perception]


def generate_launch_description():
    """Launch description: the arguments, then the camera and perception.launch.py."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS] + [OpaqueFunction(function=launch_setup)])
