"""Launch the mtdp_ros perception node, optionally with RViz.

Example::

    ros2 launch mtdp_ros perception.launch.py image_topic:=/camera/color/image_raw
        camera_info_topic:=/camera/color/camera_info device:=cuda use_rviz:=true

Arguments left empty keep the value of ``params_file`` (or the node's default).
"""

import os
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'mtdp_ros'
# (name, default, description): the launch arguments of this file.
ARGUMENTS = (
    ('image_topic', '/camera/image_raw',
     'Camera image topic (sensor_msgs/Image); <image_topic>/compressed is used with '
     'input.transport compressed.'),
    ('camera_info_topic', '/camera/camera_info', 'CameraInfo topic of that camera.'),
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
    ('use_rviz', 'false', 'Start RViz with rviz/perception.rviz.'),
    ('fixed_frame', 'camera_optical_frame', "RViz fixed frame: the camera's frame_id."),
)


def package_share():
    """The installed share directory, or the source tree when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(PACKAGE)
    except Exception:  # noqa: B902 - not installed: use the tree this file lies in
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parameter_overrides(context):
    """Node parameters from the non-empty launch arguments."""
    def value(name):
        return LaunchConfiguration(name).perform(context).strip()

    overrides = {}
    if value('preset'):
        overrides['model.preset'] = value('preset')
    if value('checkpoint'):
        overrides['model.checkpoint'] = value('checkpoint')
    if value('device'):
        overrides['engine.device'] = value('device')
    if value('tasks'):
        overrides['tasks'] = [t.strip() for t in value('tasks').split(',') if t.strip()]
    if value('steps'):
        overrides['diffusion.steps'] = int(value('steps'))
    return overrides


def rviz_config(context, share):
    """The RViz file, rewritten for the namespace and fixed frame when they differ."""
    path = os.path.join(share, 'rviz', 'perception.rviz')
    namespace = LaunchConfiguration('namespace').perform(context).strip().strip('/')
    fixed_frame = LaunchConfiguration('fixed_frame').perform(context).strip()
    if not namespace and fixed_frame == 'camera_optical_frame':
        return path
    with open(path, 'r', encoding='utf-8') as handle:
        text = handle.read()
    if namespace:
        for topic in ('semantic/color', 'depth/color', 'normals/color', 'edges/color',
                      'human_parts/color', 'saliency/color', 'points'):
            text = text.replace(f'Value: /{topic}\n', f'Value: /{namespace}/{topic}\n')
    text = text.replace('Fixed Frame: camera_optical_frame', f'Fixed Frame: {fixed_frame}')
    handle, rewritten = tempfile.mkstemp(prefix='mtdp_perception_', suffix='.rviz')
    with os.fdopen(handle, 'w', encoding='utf-8') as out:
        out.write(text)
    return rewritten


def launch_setup(context, *args, **kwargs):
    """The node (and RViz) for the evaluated arguments."""
    share = package_share()
    parameters = []
    params_file = LaunchConfiguration('params_file').perform(context).strip()
    if params_file:
        parameters.append(params_file)
    parameters.append(parameter_overrides(context))
    image_topic = LaunchConfiguration('image_topic').perform(context)
    actions = [Node(
        package=PACKAGE, executable='perception_node',
        name=LaunchConfiguration('node_name'), namespace=LaunchConfiguration('namespace'),
        parameters=parameters, output='screen', emulate_tty=True,
        remappings=[('image', image_topic),
                    ('image/compressed', image_topic.rstrip('/') + '/compressed'),
                    ('camera_info', LaunchConfiguration('camera_info_topic'))])]
    if LaunchConfiguration('use_rviz').perform(context).lower() in ('true', '1', 'yes'):
        actions.append(Node(package='rviz2', executable='rviz2', name='rviz2',
                            arguments=['-d', rviz_config(context, share)], output='log'))
    return actions


def generate_launch_description():
    """Launch description: the arguments above, then the node (and RViz)."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=launch_setup)])
