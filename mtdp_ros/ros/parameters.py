"""Every parameter of the perception node, declared in one place with its descriptor.

``SPECS`` lists name, default, description, range or choices, and whether the value can
change while the node runs (``dynamic``) or needs a restart (declared read-only). The
node declares them with :func:`declare_all` and validates the start-up values with
:func:`validate_startup` (fail fast); its parameter callback checks every later change with
:func:`check_value` and the model-dependent checks (:func:`check_tasks`, :func:`check_steps`).
The engine options' choices and the step limit come from ``mtdp_ros.runtime.options``.
"""

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from mtdp_ros.models.tasks import task_names
from mtdp_ros.ros.image_input import DEFAULT_MAX_PIXELS
from mtdp_ros.runtime.options import BACKENDS, DEVICES, MAX_STEPS, PRECISIONS, REPARAMETERIZE
from mtdp_ros.runtime.postprocess import DEFAULT_FOCAL_CORRECTION, FOCAL_CORRECTIONS

# `tasks: ['all']`: every task of the model (a reset: `ros2 param set ... tasks "[]"` types
# the empty list as a bool array, which a string-array parameter refuses).
ALL_TASKS = 'all'
# Read-only once configured, writable while unconfigured (a lifecycle manager switches
# models between cleanup and configure).
UNCONFIGURED_ONLY = ('model.preset', 'model.checkpoint')
INT32_MAX = 2 ** 31 - 1


@dataclass(frozen=True)
class Spec:
    """One parameter: default (a value, or a Parameter.Type when it has no static default)."""

    name: str
    default: object
    description: str
    dynamic: bool = False
    choices: Tuple[str, ...] = ()
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None


SPECS = (
    # Restart needed: the engine is built from these.
    Spec('model.preset', 'default',
         "Model to run: 'default' (the shipped MLoRE), 'default_taskdiffusion', a preset name "
         "(e.g. mlore_nyud_vitL), a .safetensors checkpoint (config in its metadata) or a "
         ".yaml/.json model config file."),
    Spec('model.checkpoint', '',
         "Weights overriding the model's own: a .safetensors file or the authors' .pth "
         "checkpoint ('' = the model's own, or random weights with a warning)."),
    Spec('engine.backend', 'torch', 'Inference engine.', choices=BACKENDS),
    Spec('engine.device', 'auto',
         "'auto' (CUDA when present, else the CPU with a warning), 'cuda' (error when "
         "absent) or 'cpu'.", choices=DEVICES),
    Spec('engine.precision', 'fp32', 'Arithmetic precision (fp16 on CUDA only).',
         choices=PRECISIONS),
    Spec('engine.reparameterize', 'auto',
         "MLoRE experts fused into one convolution per task: 'auto' (when the fused weights "
         "fit in half of the device's free memory, else the train form with a logged "
         "reason), 'true' or 'false'.", choices=REPARAMETERIZE),
    Spec('input.transport', 'raw',
         "'raw': subscribe to image (sensor_msgs/Image); 'compressed': subscribe to "
         "image/compressed (sensor_msgs/CompressedImage, decoded with OpenCV).",
         choices=('raw', 'compressed')),
    Spec('input.qos', 'reliable',
         "QoS of the image subscription: 'reliable' (loses no frame of a reliable camera; "
         "never matches a best-effort one) or 'sensor_data' (best effort: matches every "
         "camera, but loses most large frames between processes; see README, Transport "
         "and QoS).", choices=('sensor_data', 'reliable')),
    Spec('input.qos_depth', 5, 'History depth of the image and camera_info subscriptions.',
         int_range=(1, 100)),
    Spec('output.qos', 'reliable',
         "QoS of the outputs: 'reliable' (matches every subscriber) or 'sensor_data' "
         "(best effort).", choices=('reliable', 'sensor_data')),
    Spec('output.qos_depth', 10, 'History depth of the output publishers (keeps every '
         'output until a reliable recorder has it; see README, Transport and QoS).',
         int_range=(1, 100)),
    Spec('diagnostics.period', 1.0, 'Seconds between /diagnostics messages.',
         float_range=(0.1, 60.0)),
    Spec('autostart', True,
         'Configure and activate at start-up (true), or start unconfigured and wait for the '
         'lifecycle transitions on ~/change_state (false).'),
    Spec('camera.rectified', False,
         'True: the input image is rectified (image_rect): the point cloud uses P from '
         'camera_info and ignores D. False: the raw image: K and D (undistorted).'),
    Spec('depth.focal_correction', DEFAULT_FOCAL_CORRECTION,
         "Metric depth for the camera's focal length (K, or P when camera.rectified; needs "
         "camera_info, else uncorrected): 'hybrid' (depth rescaled by the focal ratio for a "
         "wider camera, by its square root for a zoomed one), 'canonical' (a zoomed camera's "
         "image shrunk to the training focal length, the rest rescaled), 'scale' (depth "
         "rescaled) or 'off'; true/false: hybrid/off.",
         choices=FOCAL_CORRECTIONS + (True, False)),
    Spec('cameras', Parameter.Type.STRING_ARRAY,
         'Names of several cameras served by one engine (e.g. [front,left]): each '
         'subscribes <name>/image and <name>/camera_info and publishes every output under '
         '<name>/. Unset or empty: one camera on image and camera_info.'),
    Spec('cameras.max_batch', 8,
         'Most frames (one per camera) run as one batch; with more cameras, they take '
         'turns (round-robin).', int_range=(1, 64)),
    # Take effect while running.
    Spec('tasks', Parameter.Type.STRING_ARRAY,
         "Tasks to compute and publish (a subset of the model's: "
         f"{', '.join(task_names())}); unset or ['{ALL_TASKS}'] = all of the model's.",
         dynamic=True),
    Spec('diffusion.steps', 0,
         'DDIM steps of a TaskDiffusion model (0 = the steps it was trained with); '
         'must stay 0 for MLoRE models.', dynamic=True, int_range=(0, MAX_STEPS)),
    Spec('diffusion.seed', 0, "Seed of the sampler's initial noise (TaskDiffusion).",
         dynamic=True, int_range=(0, INT32_MAX)),
    Spec('publish.color', True,
         'Publish the colour images (<output>/color); computed only while subscribed.',
         dynamic=True),
    Spec('publish.points', True,
         'Publish the point cloud `points` (needs the depth task and camera_info); computed '
         'only while subscribed.', dynamic=True),
    Spec('points.stride', 1, 'Keep every n-th pixel along each axis in the point cloud.',
         dynamic=True, int_range=(1, 16)),
    Spec('points.color', 'image', "Point colours: 'image' (camera) or 'semantic' (classes).",
         dynamic=True, choices=('image', 'semantic')),
    Spec('depth.color_min', 0.0, 'Near end (metres) of depth/color (0 = frame minimum).',
         dynamic=True, float_range=(0.0, 1000.0)),
    Spec('depth.color_max', 0.0, 'Far end (metres) of depth/color (0 = frame maximum).',
         dynamic=True, float_range=(0.0, 1000.0)),
    Spec('input.max_pixels', DEFAULT_MAX_PIXELS,
         'Frames (raw, or as a compressed header declares) with more pixels are rejected; '
         'bounds one frame\'s memory (about 39 MiB per megapixel).', dynamic=True,
         int_range=(1, INT32_MAX)),
    Spec('watchdog.timeout', 3.0,
         'Seconds without an input frame before the node warns (naming topic, QoS and '
         'publishers).', dynamic=True, float_range=(0.5, 3600.0)),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def descriptor(spec: Spec) -> ParameterDescriptor:
    """The ParameterDescriptor of a spec (ranges, choices in the constraints, read-only)."""
    # UNCONFIGURED_ONLY: the node refuses changes once configured (its callback).
    text = ParameterDescriptor(name=spec.name, description=spec.description,
                               read_only=not spec.dynamic
                               and spec.name not in UNCONFIGURED_ONLY)
    if spec.choices:
        text.additional_constraints = 'one of: ' + ', '.join(
            str(choice).lower() if isinstance(choice, bool) else choice
            for choice in spec.choices)
        # A string parameter that also takes true/false (depth.focal_correction's aliases).
        text.dynamic_typing = any(isinstance(choice, bool) for choice in spec.choices)
    if spec.int_range is not None:
        text.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                           to_value=spec.int_range[1], step=1)]
    if spec.float_range is not None:
        text.floating_point_range = [FloatingPointRange(
            from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)]
        # Accept integers too ('depth.color_max:=5' parses as one); check_value checks
        # the type and the range.
        text.dynamic_typing = True
    if isinstance(spec.default, Parameter.Type):
        text.type = spec.default.value
    if spec.name == 'tasks':
        text.type = ParameterType.PARAMETER_STRING_ARRAY
    return text


def declare_all(node):
    """Declare every parameter of SPECS on ``node``.

    Overrides from the command line or a YAML file are applied, and range- and
    type-checked by rclpy.
    """
    for spec in SPECS:
        node.declare_parameter(spec.name, spec.default, descriptor(spec))


def current_values(node):
    """Map each parameter name of SPECS to its value (None when declared but unset)."""
    values = {}
    for spec in SPECS:
        try:
            values[spec.name] = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            values[spec.name] = None
    return values


def check_value(spec: Spec, value):
    """None when ``value`` suits ``spec`` (choices, ranges), else the reason."""
    if spec.float_range is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'{spec.name} must be a number, got {value!r}'
        if value != value:
            return f'{spec.name} must be a number, got NaN'
    if spec.choices and value not in spec.choices:
        return f'{spec.name} must be one of {list(spec.choices)}, got {value!r}'
    if spec.int_range is not None and not spec.int_range[0] <= value <= spec.int_range[1]:
        return (f'{spec.name} must lie in {spec.int_range[0]}..{spec.int_range[1]}, '
                f'got {value}')
    if spec.float_range is not None and not (
            spec.float_range[0] <= value <= spec.float_range[1]):
        return (f'{spec.name} must lie in {spec.float_range[0]}..{spec.float_range[1]}, '
                f'got {value}')
    return None


def check_tasks(tasks, model_tasks):
    """None when ``tasks`` is a valid non-empty subset of ``model_tasks``, else the reason.

    ``['all']`` (ALL_TASKS) is valid: every task of the model.
    """
    tasks = list(tasks)
    if tasks == [ALL_TASKS]:
        return None
    if not tasks:
        return (f'tasks must name at least one of the model\'s tasks {list(model_tasks)}, '
                f"or be ['{ALL_TASKS}'] for all of them")
    unknown = [task for task in tasks if task not in model_tasks]
    if unknown:
        return f'unknown tasks {unknown}; this model has {list(model_tasks)}'
    if len(set(tasks)) != len(tasks):
        return f'tasks lists a task twice: {tasks}'
    return None


def selected_tasks(tasks, model_tasks):
    """The tasks ``tasks`` selects, in model order (``['all']``: every one)."""
    if list(tasks) == [ALL_TASKS]:
        return tuple(model_tasks)
    return tuple(t for t in model_tasks if t in tasks)


def check_unconfigured_only(name, state):
    """None when parameter ``name`` may change in lifecycle ``state``, else the reason."""
    if name in UNCONFIGURED_ONLY and state != 'unconfigured':
        return (f'{name} can change only while the node is unconfigured (now {state}): '
                f'deactivate and cleanup, set it, then configure loads the new model')
    return None


def check_steps(steps, engine):
    """None when ``engine`` can run diffusion.steps ``steps`` (0: its trained count), else why.

    The engine's own check (``Engine.check_steps``: the family, the range, what a fixed
    ``.onnx`` file holds), worded for the parameter.
    """
    reason = engine.check_steps(steps or None)
    if not reason:
        return None
    return f'diffusion.steps: {reason}' + ('' if engine.diffusion else ' (keep it 0)')


CAMERA_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*')


def check_cameras(names):
    """None when ``names`` are usable camera names (relative topic prefixes), else why not."""
    names = list(names or [])
    for name in names:
        if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name):
            return (f'cameras: {name!r} is not a camera name (letters, digits and _, '
                    f'starting with a letter; / between parts; relative, so namespaces '
                    f'and remapping apply)')
    if len(set(names)) != len(names):
        return f'cameras lists a camera twice: {names}'
    return None


def camera_names(values):
    """The camera names of the parameter ``values`` ([''] : the single camera)."""
    names = list(values.get('cameras') or [])
    return names if names and not check_cameras(names) else ['']


def check_depth_range(minimum, maximum):
    """None when the depth colour range is valid (max 0 = automatic), else the reason."""
    if maximum and maximum <= minimum:
        return (f'depth.color_max ({maximum}) must exceed depth.color_min ({minimum}), or be '
                f'0 for the frame maximum')
    return None


def validate_startup(values):
    """Reasons (list of str) why the start-up ``values`` (name -> value) are invalid."""
    problems = []
    for name, value in values.items():
        spec = SPEC_BY_NAME.get(name)
        if spec is not None and value is not None:
            reason = check_value(spec, value)
            if reason:
                problems.append(reason)
    reason = check_depth_range(values.get('depth.color_min', 0.0),
                               values.get('depth.color_max', 0.0))
    if reason:
        problems.append(reason)
    reason = check_cameras(values.get('cameras'))
    if reason:
        problems.append(reason)
    return problems
