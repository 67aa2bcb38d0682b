"""Launch files, parameter files, RViz layout and package.xml: they must not rot silently.

The launch files need ``launch``/``launch_ros`` (ROS installations only); without them they
are still parsed and their arguments checked. Parameter files are read by rcl's own YAML
parser through rclpy.
"""

import ast
import glob
import os
import xml.etree.ElementTree as ElementTree

import pytest
import rclpy
import yaml

from mtdp_ros.ros import parameters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCEPTION_LAUNCH = os.path.join(REPO, 'launch', 'perception.launch.py')
DEMO_LAUNCH = os.path.join(REPO, 'launch', 'demo.launch.py')
REQUIRED_ARGUMENTS = {'image_topic', 'camera_info_topic', 'namespace', 'params_file',
                      'preset', 'checkpoint', 'tasks', 'steps', 'device', 'use_rviz'}


def launch_arguments(path):
    """Names of the ARGUMENTS table of a launch file, read with ast (no import)."""
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=path)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == 'ARGUMENTS' for t in node.targets):
            return [entry[0] for entry in ast.literal_eval(node.value)]
    raise AssertionError(f'{path} has no ARGUMENTS table')


def test_perception_launch_parses_and_declares_the_required_arguments():
    names = launch_arguments(PERCEPTION_LAUNCH)
    assert REQUIRED_ARGUMENTS <= set(names), REQUIRED_ARGUMENTS - set(names)
    assert len(names) == len(set(names))
    source = open(PERCEPTION_LAUNCH, encoding='utf-8').read()
    for words in ("executable='perception_node'", 'DeclareLaunchArgument',
                  "('image', image_topic)", "('camera_info',", "executable='rviz2'",
                  "'perception.rviz'"):
        assert words in source, words


def test_demo_launch_parses_and_includes_the_perception_launch():
    names = launch_arguments(DEMO_LAUNCH)
    assert {'source', 'rate', 'preset', 'device', 'use_rviz'} <= set(names)
    source = open(DEMO_LAUNCH, encoding='utf-8').read()
    assert "executable='demo_camera'" in source and 'perception.launch.py' in source


def require_launch_api():
    """Skip unless the real ROS 2 launch packages are importable.

    (``import launch`` alone can succeed on this repository's own launch/ folder, a
    namespace package, so the check imports the modules the launch files use.)
    """
    try:
        import launch.actions  # noqa: F401
        import launch_ros.actions  # noqa: F401
    except ImportError as exc:
        pytest.skip(f'launch / launch_ros (ROS 2 installations only, not on PyPI) are not '
                    f'installed: {exc}')


def test_launch_descriptions_build_with_the_real_launch_api():
    require_launch_api()
    import importlib.util

    from launch.actions import DeclareLaunchArgument
    for path, required in ((PERCEPTION_LAUNCH, REQUIRED_ARGUMENTS),
                           (DEMO_LAUNCH, {'source', 'use_rviz'})):
        spec = importlib.util.spec_from_file_location('launch_under_test', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
        declared = {entity.name for entity in description.entities
                    if isinstance(entity, DeclareLaunchArgument)}
        assert required <= declared


CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'config', '*.yaml')))


def test_a_config_file_per_model_family():
    names = {os.path.basename(path) for path in CONFIG_FILES}
    assert {'mlore.yaml', 'taskdiffusion.yaml', 'taskdiffusion_mlore.yaml'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_files_hold_only_valid_node_parameters(path):
    # rcl's YAML parser (the one `--params-file` uses) reads the file...
    context = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', path], context=context)
    try:
        node = rclpy.create_node(
            'mtdp_perception', context=context,
            automatically_declare_parameters_from_overrides=True)
        values = {name: node.get_parameter(name).value
                  for name in node._parameters
                  if name not in ('use_sim_time', 'start_type_description_service')}
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert values, f'{path} sets no parameter for the node'
    unknown = sorted(set(values) - set(parameters.SPEC_BY_NAME))
    assert not unknown, f'{path} sets undeclared parameters {unknown}'
    # ... and every value has the declared type and passes the node's checks.
    for name, value in values.items():
        default = parameters.SPEC_BY_NAME[name].default
        if isinstance(default, (bool, int, float, str)):
            assert type(value) is type(default), (name, value)
    assert parameters.validate_startup(values) == []


def test_rviz_layout_shows_every_colour_output_and_the_cloud():
    layout = yaml.safe_load(open(os.path.join(REPO, 'rviz', 'perception.rviz'),
                                 encoding='utf-8'))
    manager = layout['Visualization Manager']
    topics = {display['Topic']['Value']: display['Class']
              for display in manager['Displays'] if 'Topic' in display}
    for topic in ('/semantic/color', '/depth/color', '/normals/color', '/edges/color',
                  '/human_parts/color', '/saliency/color'):
        assert topics.get(topic) == 'rviz_default_plugins/Image', topic
    assert topics.get('/points') == 'rviz_default_plugins/PointCloud2'
    assert manager['Global Options']['Fixed Frame'] == 'camera_optical_frame'


def test_package_xml_is_format_3_with_the_runtime_dependencies():
    root = ElementTree.parse(os.path.join(REPO, 'package.xml')).getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'mtdp_ros'
    assert root.findtext('license') == 'Apache-2.0'
    exec_depends = {element.text for element in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'cv_bridge',
            'python3-numpy', 'python3-opencv', 'python3-yaml', 'launch', 'launch_ros',
            'rviz2'} <= exec_depends
    assert root.find('export/build_type').text == 'ament_python'
    assert os.path.isfile(os.path.join(REPO, 'resource', 'mtdp_ros'))
