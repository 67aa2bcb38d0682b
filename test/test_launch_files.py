"""Launch files, parameter files, RViz layout and package.xml: they must not rot silently.

The launch files need ``launch``/``launch_ros`` (ROS installations only); without them they
are still parsed and their arguments checked. Parameter files are read by rcl's own YAML
parser through rclpy.
"""

import ast
import glob
import os
from types import SimpleNamespace
import xml.etree.ElementTree as ElementTree

import pytest
import rclpy
import yaml

from mtdp_ros.ros import launch_support, parameters
from mtdp_ros.ros.launch_support import LaunchArgumentError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCEPTION_LAUNCH = os.path.join(REPO, 'launch', 'perception.launch.py')
DEMO_LAUNCH = os.path.join(REPO, 'launch', 'demo.launch.py')
REQUIRED_ARGUMENTS = {'image_topic', 'camera_info_topic', 'namespace', 'params_file',
                      'preset', 'checkpoint', 'tasks', 'steps', 'device', 'use_rviz',
                      'autostart'}


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
    assert {'source', 'rate', 'preset', 'device', 'use_rviz', 'autostart'} <= set(names)
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


def fake_rviz2_prefix(root):
    """An ament prefix holding a package 'rviz2' with an executable lib/rviz2/rviz2."""
    index = root / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / 'rviz2').write_text('')
    executable = root / 'lib' / 'rviz2' / 'rviz2'
    executable.parent.mkdir(parents=True)
    executable.write_text('#!/bin/sh\nexec sleep 3600\n')
    executable.chmod(0o755)
    return str(root)


ARGUMENT_DEFAULTS = {name: default for name, default, _ in (
    ast.literal_eval(next(
        node.value for node in ast.parse(open(PERCEPTION_LAUNCH, encoding='utf-8').read()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'ARGUMENTS')))}


def test_launch_arguments_become_typed_node_parameters(tmp_path):
    params_file = tmp_path / 'params.yaml'
    params_file.write_text('mtdp_perception:\n  ros__parameters: {}\n')
    values = dict(ARGUMENT_DEFAULTS, params_file=str(params_file), preset='default',
                  tasks=' semseg, depth ,', steps='3', device='cpu', autostart='false',
                  use_rviz='TRUE')
    assert launch_support.node_parameters_from_arguments(values) == {
        'model.preset': 'default', 'tasks': ['semseg', 'depth'], 'diffusion.steps': 3,
        'engine.device': 'cpu', 'autostart': False}
    # The defaults: nothing but autostart (true) reaches the node.
    assert launch_support.node_parameters_from_arguments(ARGUMENT_DEFAULTS) == {
        'autostart': True}


@pytest.mark.parametrize('name, value, words', [
    ('steps', 'abc', ["'steps'", 'whole number 0..100', "'abc'"]),
    ('steps', '-1', ["'steps'", "'-1'"]),
    ('steps', '101', ["'steps'", "'101'"]),
    ('use_rviz', 'maybe', ["'use_rviz'", 'true or false', "'maybe'"]),
    ('input_reliability', 'sensor_data', ["'input_reliability'", "'best_effort'",
                                          "'sensor_data'"]),
    ('autostart', 'yes please', ["'autostart'", 'true or false']),
    ('device', 'gpu', ["'device'", "['auto', 'cuda', 'cpu']", "'gpu'"]),
    ('tasks', ', ,', ["'tasks'", 'semseg,depth']),
])
def test_a_bad_launch_argument_is_named_with_the_accepted_values(name, value, words):
    with pytest.raises(LaunchArgumentError) as error:
        launch_support.node_parameters_from_arguments(dict(ARGUMENT_DEFAULTS, **{name: value}))
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_input_reliability_becomes_the_standard_qos_parameters_of_the_inputs():
    values = dict(ARGUMENT_DEFAULTS, input_reliability='best_effort')
    overrides = launch_support.node_parameters_from_arguments(values)
    assert ARGUMENT_DEFAULTS['image_topic'] == '/camera/image_raw'
    assert {name: value for name, value in overrides.items() if name != 'autostart'} == {
        'qos_overrides./camera/image_raw.subscription.reliability': 'best_effort',
        'qos_overrides./camera/image_raw/compressed.subscription.reliability': 'best_effort',
        'qos_overrides./camera/camera_info.subscription.reliability': 'best_effort'}
    # Relative topics live in the node's namespace (as the node resolves them).
    relative = dict(values, image_topic='cam/image', camera_info_topic='cam/info',
                    namespace='/front/', input_reliability='reliable')
    assert sorted(launch_support.node_parameters_from_arguments(relative))[1:] == [
        'qos_overrides./front/cam/image.subscription.reliability',
        'qos_overrides./front/cam/image/compressed.subscription.reliability',
        'qos_overrides./front/cam/info.subscription.reliability']


def test_a_mistyped_params_file_is_named_not_ignored(tmp_path):
    missing = str(tmp_path / 'mlroe.yaml')
    with pytest.raises(LaunchArgumentError) as error:
        launch_support.node_parameters_from_arguments(
            dict(ARGUMENT_DEFAULTS, params_file=missing))
    assert "'params_file'" in str(error.value) and missing in str(error.value)
    with pytest.raises(LaunchArgumentError, match='not a file'):
        launch_support.node_parameters_from_arguments(
            dict(ARGUMENT_DEFAULTS, params_file=str(tmp_path)))


def test_demo_numbers_are_checked_by_name():
    assert launch_support.parse_number('rate', ' 15 ', float, 0.1, 1000.0) == 15.0
    for text in ('fast', 'nan', '0', '1e9'):
        with pytest.raises(LaunchArgumentError, match="'rate'"):
            launch_support.parse_number('rate', text, float, 0.1, 1000.0)
    with pytest.raises(LaunchArgumentError, match="'width' must be a whole number"):
        launch_support.parse_number('width', '64.5', int, 0, 16384)


def test_the_fastdds_transport_argument_never_overrides_the_users_choice():
    assert ARGUMENT_DEFAULTS['fastdds_transports'] == 'LARGE_DATA'
    assert launch_support.fastdds_transports('LARGE_DATA', {}) == 'LARGE_DATA'
    assert launch_support.fastdds_transports(' ', {}) is None
    assert launch_support.fastdds_transports(
        'LARGE_DATA', {'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}) is None
    with pytest.raises(LaunchArgumentError, match="'fastdds_transports'.*'LARGEDATA'"):
        launch_support.node_parameters_from_arguments(
            dict(ARGUMENT_DEFAULTS, fastdds_transports='LARGEDATA'))


def test_rviz2_is_found_only_where_its_package_and_executable_are(tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(empty))
    assert launch_support.find_rviz2() is None
    monkeypatch.delenv('AMENT_PREFIX_PATH')
    assert launch_support.find_rviz2() is None
    prefix = fake_rviz2_prefix(tmp_path / 'prefix')
    monkeypatch.setenv('AMENT_PREFIX_PATH', prefix)
    assert launch_support.find_rviz2() == os.path.join(prefix, 'lib', 'rviz2', 'rviz2')
    os.chmod(launch_support.find_rviz2(), 0o644)      # not executable: not usable
    assert launch_support.find_rviz2() is None


def test_rviz_follows_namespace_and_frame_by_remapping_without_a_rewritten_file():
    layout = os.path.join(REPO, 'rviz', 'perception.rviz')
    assert launch_support.rviz_arguments(layout, '', '') == (['-d', layout], [])
    arguments, remappings = launch_support.rviz_arguments(layout, '/robot/cam/', 'base')
    assert arguments == ['-d', layout, '-f', 'base']
    assert ('/semantic/color', '/robot/cam/semantic/color') in remappings
    assert ('/points', '/robot/cam/points') in remappings
    # Every topic the layout displays is remapped.
    displays = yaml.safe_load(open(layout, encoding='utf-8'))['Visualization Manager'][
        'Displays']
    shown = {d['Topic']['Value'] for d in displays if 'Topic' in d}
    assert shown == {source for source, _ in remappings}
    for path in (PERCEPTION_LAUNCH, DEMO_LAUNCH):
        assert 'tempfile' not in open(path, encoding='utf-8').read()


def evaluate_launch_setup(path, arguments):
    """The actions a launch file's OpaqueFunction returns for ``arguments`` (real launch)."""
    import importlib.util

    import launch
    spec = importlib.util.spec_from_file_location('launch_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = launch.LaunchContext()
    defaults = {name: default for name, default, _ in module.ARGUMENTS}
    context.launch_configurations.update(dict(defaults, **arguments))
    return module.launch_setup(context)


def node_actions(actions):
    """(package, executable) of the launch_ros Node actions among ``actions``."""
    from launch_ros.actions import Node
    return [(a.node_package, a.node_executable) for a in actions if isinstance(a, Node)]


def test_use_rviz_without_rviz2_runs_the_node_alone(tmp_path, monkeypatch):
    require_launch_api()
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(empty))
    monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)
    actions = evaluate_launch_setup(PERCEPTION_LAUNCH, {'use_rviz': 'true'})
    assert node_actions(actions) == [('mtdp_ros', 'perception_node')]
    # The transport variable is set before the node starts.
    from launch.actions import SetEnvironmentVariable
    assert isinstance(actions[0], SetEnvironmentVariable)
    monkeypatch.setenv('AMENT_PREFIX_PATH', fake_rviz2_prefix(tmp_path / 'prefix'))
    actions = evaluate_launch_setup(PERCEPTION_LAUNCH, {'use_rviz': 'true',
                                                        'namespace': 'cam'})
    assert node_actions(actions) == [('mtdp_ros', 'perception_node'), ('rviz2', 'rviz2')]


def test_bad_arguments_stop_the_launch_before_any_process(tmp_path):
    require_launch_api()
    with pytest.raises(LaunchArgumentError, match="'steps'"):
        evaluate_launch_setup(PERCEPTION_LAUNCH, {'steps': 'abc'})
    with pytest.raises(LaunchArgumentError, match="'params_file'"):
        evaluate_launch_setup(PERCEPTION_LAUNCH, {'params_file': str(tmp_path / 'no.yaml')})
    # The demo checks before its camera starts: no camera is left behind.
    with pytest.raises(LaunchArgumentError, match="'steps'"):
        evaluate_launch_setup(DEMO_LAUNCH, {'steps': 'abc'})
    with pytest.raises(LaunchArgumentError, match="'rate'"):
        evaluate_launch_setup(DEMO_LAUNCH, {'rate': 'fast'})


def test_a_failed_process_stops_the_launch_with_its_reason():
    # The OnProcessExit handler (no launch needed: the event is duck-typed).
    failed = SimpleNamespace(process_name='perception_node-1', returncode=1)
    with pytest.raises(launch_support.ProcessFailedError,
                       match='perception_node-1 exited with code 1'):
        launch_support.stop_launch_on_failure(failed, None)
    killed = SimpleNamespace(process_name='demo_camera-1', returncode=-9)
    with pytest.raises(launch_support.ProcessFailedError, match='killed by signal 9'):
        launch_support.stop_launch_on_failure(killed, None)
    clean = SimpleNamespace(process_name='perception_node-1', returncode=0)
    assert launch_support.stop_launch_on_failure(clean, None) is None


def exit_handlers(actions):
    """The OnProcessExit handlers among ``actions``."""
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    return [action.event_handler for action in actions
            if isinstance(action, RegisterEventHandler)
            and isinstance(action.event_handler, OnProcessExit)]


def process_exited(action, returncode):
    """The real ProcessExited event launch emits when ``action``'s process ends."""
    from launch.events.process import ProcessExited
    return ProcessExited(action=action, name=f'{action.node_executable}-1', cmd=[], cwd=None,
                         env=None, pid=1, returncode=returncode)


def test_the_launch_files_watch_their_processes_exit(monkeypatch):
    require_launch_api()
    import launch
    from launch_ros.actions import Node
    monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)
    context = launch.LaunchContext()
    for path, executable in ((PERCEPTION_LAUNCH, 'perception_node'),
                             (DEMO_LAUNCH, 'demo_camera')):
        actions = evaluate_launch_setup(path, {})
        process, = [a for a in actions if isinstance(a, Node)]
        assert process.node_executable == executable
        handler, = exit_handlers(actions)
        assert handler.matches(process_exited(process, 1))
        assert not handler.matches(process_exited(Node(package='x', executable='y'), 1))
        with pytest.raises(launch_support.ProcessFailedError, match=f'{executable}-1 exited'):
            handler.handle(process_exited(process, 1), context)
        assert handler.handle(process_exited(process, 0), context) is None


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
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'python3-numpy',
            'python3-opencv', 'python3-yaml', 'python3-torch', 'python3-onnxruntime-pip',
            'python3-rosbags-pip', 'launch', 'launch_ros'} <= exec_depends
    # A headless robot needs no RViz (nor Qt); cv_bridge is an optional fallback only.
    assert not {'rviz2', 'cv_bridge'} & exec_depends
    assert root.find('export/build_type').text == 'ament_python'
    assert os.path.isfile(os.path.join(REPO, 'resource', 'mtdp_ros'))


@pytest.mark.parametrize('text, names', [
    ('', []), ('[]', []), ('[front,left]', ['front', 'left']),
    (" [ 'front' , rear/wide ] ", ['front', 'rear/wide']), ('front,left', ['front', 'left']),
])
def test_the_cameras_argument_becomes_the_cameras_parameter(text, names):
    overrides = launch_support.node_parameters_from_arguments(
        dict(ARGUMENT_DEFAULTS, cameras=text))
    assert overrides.get('cameras', []) == names
    # RViz shows the first camera's outputs (in the node's namespace).
    expected = {'': 'robot', '[]': 'robot'}.get(text, f'robot/{names[0]}' if names else '')
    assert launch_support.rviz_namespace('/robot/', names) == expected


@pytest.mark.parametrize('text, words', [
    ('[front,front]', 'twice'), ('[1cam]', "'1cam'"), ('[/abs]', "'/abs'"),
    ('[a b]', "'a b'"),
])
def test_a_bad_cameras_argument_is_named(text, words):
    with pytest.raises(LaunchArgumentError, match="'cameras'") as error:
        launch_support.node_parameters_from_arguments(dict(ARGUMENT_DEFAULTS, cameras=text))
    assert words in str(error.value)


def test_the_launch_file_points_rviz_at_the_first_camera(tmp_path, monkeypatch):
    require_launch_api()
    monkeypatch.setenv('AMENT_PREFIX_PATH', fake_rviz2_prefix(tmp_path / 'prefix'))
    actions = evaluate_launch_setup(PERCEPTION_LAUNCH, {
        'use_rviz': 'true', 'namespace': 'robot', 'cameras': '[front,left]'})
    from launch_ros.actions import Node
    nodes = [a for a in actions if isinstance(a, Node)]
    assert [(n.node_package, n.node_executable) for n in nodes] == [
        ('mtdp_ros', 'perception_node'), ('rviz2', 'rviz2')]
    # launch_ros keeps each remapping as (substitutions, substitutions): plain text here.
    remappings = {''.join(part.text for part in source): ''.join(part.text for part in target)
                  for source, target in nodes[1]._Node__remappings}
    assert remappings['/points'] == '/robot/front/points'


ROSDEP_KEYS = os.path.join(REPO, 'test', 'rosdep_keys.txt')
DEPEND_TAGS = ('depend', 'build_depend', 'buildtool_depend', 'build_export_depend',
               'exec_depend', 'test_depend', 'doc_depend')


def test_every_package_xml_key_is_one_rosdep_knows():
    # test/rosdep_keys.txt: the keys scripts/check_rosdep_keys.py found in rosdep's own
    # YAML files (rosdistro copy named by digests in its header); `rosdep install` fails
    # on the first key it cannot resolve (ament_python was one).
    known = {}
    with open(ROSDEP_KEYS, encoding='utf-8') as stream:
        for line in stream:
            if line.strip() and not line.startswith('#'):
                key, source = line.split()
                known[key] = source
    root = ElementTree.parse(os.path.join(REPO, 'package.xml')).getroot()
    keys = [element.text.strip() for element in root if element.tag in DEPEND_TAGS]
    unknown = [key for key in keys if key not in known]
    assert not unknown, (f'package.xml keys {unknown} are not in {ROSDEP_KEYS}: run '
                         f'scripts/check_rosdep_keys.py --rosdistro <copy> --write')
    assert set(known) == set(keys), 'rosdep_keys.txt lists keys package.xml no longer has'
    assert all(source.endswith('.yaml') for source in known.values())


@pytest.mark.skipif(not os.path.isdir(os.environ.get('MTDP_ROSDISTRO', '/nonexistent')),
                    reason='MTDP_ROSDISTRO (an offline copy of ros/rosdistro) not set')
def test_rosdep_keys_against_a_rosdistro_copy():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'check_rosdep_keys', os.path.join(REPO, 'scripts', 'check_rosdep_keys.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    keys = script.package_keys(os.path.join(REPO, 'package.xml'))
    _, problems = script.check(os.environ['MTDP_ROSDISTRO'], 'jazzy', 'ubuntu', 'noble', keys)
    assert not problems
