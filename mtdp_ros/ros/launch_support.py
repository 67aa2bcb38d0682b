"""What launch/*.launch.py decide, kept apart so that it is testable without ``launch``.

- :func:`node_parameters_from_arguments` checks the launch arguments (naming the argument
  and the values it accepts) and turns the non-empty ones into node parameters;
- :func:`find_rviz2` says whether RViz can be started at all (a launch without rviz2
  warns and runs the rest instead of failing and orphaning its other processes);
- :func:`rviz_arguments` points RViz at the namespaced outputs and the fixed frame by
  remapping and a command-line option, so no rewritten .rviz file is ever written;
- :func:`stop_launch_on_failure` is the OnProcessExit handler that ends a launch whose
  node failed (``ros2 launch`` then exits 1 and says why, instead of 0).
"""

import os

from mtdp_ros.runtime.options import DEVICES, MAX_STEPS

TRUE_WORDS = ('true', '1', 'yes', 'on')
FALSE_WORDS = ('false', '0', 'no', 'off')


def rviz_topics():
    """The absolute topics rviz/perception.rviz displays (relative to the node's namespace).

    Every task's colour picture (the task table, in display order) and the point cloud.
    Imported here, not at the top: launch files import this module and need no PyTorch.
    """
    from mtdp_ros.models.tasks import color_topics
    return color_topics() + ('points',)


class LaunchArgumentError(ValueError):
    """A launch argument has a value its launch file does not accept."""


class ProcessFailedError(RuntimeError):
    """A process of the launch exited with a non-zero code (or was killed)."""


def exit_problem(process_name, returncode):
    """Why the exit of ``process_name`` with ``returncode`` fails the launch, or None."""
    if returncode == 0:
        return None
    how = (f'was killed by signal {-returncode}' if returncode is not None and returncode < 0
           else f'exited with code {returncode}')
    return (f'{process_name} {how} (its log above says why); stopping the launch')


def stop_launch_on_failure(event, context):
    """End the launch when a process exits non-zero: ``ros2 launch`` then exits 1.

    The OnProcessExit handler of the launch files.

    launch's Shutdown action alone would leave the launch's exit code 0; an exception in
    an event handler is what LaunchService reports (once, with this reason), shuts the
    launch down for, and turns into a non-zero exit code.
    """
    problem = exit_problem(getattr(event, 'process_name', 'a process'), event.returncode)
    if problem is not None:
        raise ProcessFailedError(problem)
    return None


def parse_bool(name, text):
    """``text`` of boolean launch argument ``name`` as a bool; LaunchArgumentError if not."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise LaunchArgumentError(f"launch argument '{name}' must be true or false, got {text!r}")


def parse_steps(text):
    """diffusion.steps from launch argument ``steps`` (a whole number 0..MAX_STEPS)."""
    try:
        steps = int(text.strip())
    except ValueError:
        steps = None
    if steps is None or not 0 <= steps <= MAX_STEPS:
        raise LaunchArgumentError(
            f"launch argument 'steps' must be a whole number 0..{MAX_STEPS} "
            f'(0 or empty: the trained steps), got {text!r}')
    return steps


def parse_number(name, text, kind, low, high):
    """``text`` of numeric launch argument ``name`` as ``kind`` (int or float) in low..high."""
    try:
        number = kind(text.strip())
    except ValueError:
        number = None
    if number is None or number != number or not low <= number <= high:
        what = 'a whole number' if kind is int else 'a number'
        raise LaunchArgumentError(
            f"launch argument '{name}' must be {what} in {low}..{high}, got {text!r}")
    return number


def parse_cameras(text):
    """Camera names from launch argument ``cameras``: ``[front,left]`` or ``front,left``.

    Empty (or ``[]``): no names, the single-camera topics. LaunchArgumentError naming the
    first unusable name.
    """
    from mtdp_ros.ros.parameters import check_cameras
    body = text.strip()
    if body.startswith('[') and body.endswith(']'):
        body = body[1:-1]
    names = [name.strip().strip('\'"').strip() for name in body.split(',')]
    names = [name for name in names if name]
    reason = check_cameras(names)
    if reason:
        raise LaunchArgumentError(f"launch argument 'cameras' (e.g. [front,left]): {reason}")
    return names


def rviz_namespace(namespace, cameras):
    """The namespace RViz shows: the node's, or its first camera's when there are several."""
    namespace = namespace.strip().strip('/')
    if not cameras:
        return namespace
    return f'{namespace}/{cameras[0]}' if namespace else cameras[0]


def check_params_file(path):
    """Raise LaunchArgumentError unless ``path`` names a readable file."""
    if not os.path.isfile(path):
        raise LaunchArgumentError(
            f"launch argument 'params_file': {path!r} does not exist or is not a file "
            f'(give the path of a YAML parameters file, e.g. <share>/mtdp_ros/config/'
            f'mlore.yaml, or leave it empty)')
    if not os.access(path, os.R_OK):
        raise LaunchArgumentError(f"launch argument 'params_file': {path!r} is not readable")


def node_parameters_from_arguments(values):
    """Node parameter overrides from the launch arguments ``values`` (name -> text).

    Empty arguments are left out (the params_file or the node default applies). Raises
    LaunchArgumentError naming the first argument whose value is not accepted.
    """
    def value(name):
        return str(values.get(name, '')).strip()

    overrides = {}
    if value('params_file'):
        check_params_file(value('params_file'))
    if value('preset'):
        overrides['model.preset'] = value('preset')
    if value('checkpoint'):
        overrides['model.checkpoint'] = value('checkpoint')
    if value('device'):
        if value('device') not in DEVICES:
            raise LaunchArgumentError(
                f"launch argument 'device' must be one of {list(DEVICES)}, got "
                f'{value("device")!r}')
        overrides['engine.device'] = value('device')
    if value('tasks'):
        tasks = [t.strip() for t in value('tasks').split(',') if t.strip()]
        if not tasks:
            raise LaunchArgumentError(
                f"launch argument 'tasks' must name tasks separated by commas (e.g. "
                f"semseg,depth) or be empty, got {value('tasks')!r}")
        overrides['tasks'] = tasks
    if value('steps'):
        overrides['diffusion.steps'] = parse_steps(value('steps'))
    cameras = parse_cameras(value('cameras'))
    if cameras:
        overrides['cameras'] = cameras
    if value('autostart'):
        overrides['autostart'] = parse_bool('autostart', value('autostart'))
    if value('input_reliability'):
        overrides.update(input_reliability_overrides(
            value('input_reliability'), value('image_topic'), value('camera_info_topic'),
            value('namespace'), value('node_name')))
    if value('use_rviz'):
        parse_bool('use_rviz', value('use_rviz'))   # checked here, used by the launch file
    fastdds_transports(value('fastdds_transports'), {})   # checked here as well
    return overrides


RELIABILITY_CHOICES = ('reliable', 'best_effort')


def fully_qualified(topic, namespace, node_name):
    """The fully qualified name of ``topic`` for a node in ``namespace`` (rcl's rules)."""
    namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
    if topic.startswith('/'):
        return topic
    if topic.startswith('~'):
        return f'{namespace}/{node_name}{topic[1:]}'
    return f'{namespace}/{topic}'


def input_reliability_overrides(reliability, image_topic, camera_info_topic, namespace,
                                node_name):
    """qos_overrides.* parameters setting the reliability of every input subscription.

    The image (raw and compressed) and camera_info subscriptions, under the names they
    have after the launch file's remapping. LaunchArgumentError for another value.
    """
    if reliability not in RELIABILITY_CHOICES:
        raise LaunchArgumentError(
            f"launch argument 'input_reliability' must be one of {list(RELIABILITY_CHOICES)}"
            f' or empty (the default, reliable), got {reliability!r}')
    image = image_topic or 'image'
    topics = (image, image.rstrip('/') + '/compressed', camera_info_topic or 'camera_info')
    return {f'qos_overrides.{fully_qualified(topic, namespace, node_name or "")}'
            '.subscription.reliability': reliability for topic in topics}


FASTDDS_TRANSPORT_CHOICES = ('', 'DEFAULT', 'DEFAULTv6', 'SHM', 'UDPv4', 'UDPv6',
                             'LARGE_DATA', 'LARGE_DATAv6')


def fastdds_transports(text, environment):
    """The FASTDDS_BUILTIN_TRANSPORTS value the launch should set, or None to set nothing.

    ``text`` is the launch argument; an empty one, or a variable already set in
    ``environment`` (the user's choice), leaves the environment alone.
    """
    value = text.strip()
    if value not in FASTDDS_TRANSPORT_CHOICES:
        raise LaunchArgumentError(
            f"launch argument 'fastdds_transports' must be one of "
            f'{list(FASTDDS_TRANSPORT_CHOICES)}, got {text!r}')
    if not value or environment.get('FASTDDS_BUILTIN_TRANSPORTS'):
        return None
    return value


def find_rviz2():
    """The rviz2 executable launch_ros would start, or None when rviz2 is not installed."""
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_prefix)
    except ImportError:
        return None
    try:
        prefix = get_package_prefix('rviz2')
    except (PackageNotFoundError, LookupError, OSError, ValueError):
        # OSError: AMENT_PREFIX_PATH unset (no ROS environment sourced).
        return None
    path = os.path.join(prefix, 'lib', 'rviz2', 'rviz2')
    return path if os.access(path, os.X_OK) else None


def rviz_arguments(config_path, namespace, fixed_frame):
    """(command-line arguments, remappings) of RViz for the node's namespace and frame.

    The layout file names the outputs of a node in the root namespace; a namespaced node's
    outputs are reached by remapping those absolute topics, and the fixed frame is set
    with RViz's ``-f`` option, so the installed layout is used as it is.
    """
    arguments = ['-d', config_path]
    if fixed_frame:
        arguments += ['-f', fixed_frame]
    namespace = namespace.strip().strip('/')
    remappings = []
    if namespace:
        remappings = [(f'/{topic}', f'/{namespace}/{topic}') for topic in rviz_topics()]
    return arguments, remappings
