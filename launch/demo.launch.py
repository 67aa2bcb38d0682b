"""Launch the demo: demo camera + perception node + RViz.

Examples::

    ros2 launch mtdp_ros demo.launch.py                      # synthetic scenes, RViz
    ros2 launch mtdp_ros demo.launch.py source:=/path/to/video.mp4 device:=cuda
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

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
    ('use_rviz', 'true', 'Start RViz.'),
)


def launch_directory():
    """Directory of the installed launch files, or of this file in a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory(PACKAGE), 'launch')
    except Exception:  # noqa: B902 - not installed: use the tree this file lies in
        return os.path.dirname(os.path.abspath(__file__))


def generate_launch_description():
    """Launch description: the camera, and perception.launch.py fed by it."""
    namespace = LaunchConfiguration('namespace')
    camera = Node(
        package=PACKAGE, executable='demo_camera', name='demo_camera', namespace=namespace,
        output='screen',
        parameters=[{'source': LaunchConfiguration('source'),
                     'rate': LaunchConfiguration('rate'),
                     'width': LaunchConfiguration('width'),
                     'height': LaunchConfiguration('height'),
                     'frame_id': 'camera_optical_frame'}])
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_directory(),
                                                   'perception.launch.py')),
        launch_arguments={
            'image_topic': 'image', 'camera_info_topic': 'camera_info',
            'namespace': namespace, 'preset': LaunchConfiguration('preset'),
            'checkpoint': LaunchConfiguration('checkpoint'),
            'tasks': LaunchConfiguration('tasks'), 'steps': LaunchConfiguration('steps'),
            'device': LaunchConfiguration('device'),
            'use_rviz': LaunchConfiguration('use_rviz'),
            'fixed_frame': 'camera_optical_frame',
        }.items())
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS] + [camera, perception])
