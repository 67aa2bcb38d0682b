"""The node's per-frame settings and its dynamic-parameter callbacks' logic.

:class:`Settings` holds the parameter values the inference thread reads for every frame;
it is replaced whole when a parameter changes (a frame never sees half a change).
:func:`check_changes` is the set-parameters callback's verdict (a reason for the first
invalid value), :func:`apply_changes` the post-set callback's new Settings. The engine
(shared by every camera stream) is passed in; nothing here touches ROS.
"""

from dataclasses import dataclass, replace
from typing import Tuple

from mtdp_ros.ros import parameters
from mtdp_ros.ros.outputs import OutputOptions
from mtdp_ros.ros.stream import FrameSettings


@dataclass(frozen=True)
class Settings:
    """The values the inference thread reads per frame (replaced whole on a change)."""

    tasks: Tuple[str, ...]
    steps: int
    seed: int
    publish_color: bool
    publish_points: bool
    points_stride: int
    points_color: str
    depth_color_min: float
    depth_color_max: float
    max_pixels: int
    watchdog_timeout: float

    def for_frames(self, rectified, camera_index=0):
        """The FrameSettings of a camera stream (``rectified``: its camera.rectified).

        Camera ``camera_index`` (its place in the ``cameras`` parameter) draws its
        TaskDiffusion noise from ``diffusion.seed + camera_index``: one draw per camera.
        """
        options = OutputOptions(
            publish_color=self.publish_color, publish_points=self.publish_points,
            points_stride=self.points_stride, points_color=self.points_color,
            depth_color_min=self.depth_color_min, depth_color_max=self.depth_color_max,
            camera_rectified=rectified)
        # diffusion.steps 0 means the trained count: every call passes its own.
        return FrameSettings(tasks=self.tasks, steps=self.steps or None,
                             seed=(self.seed + camera_index) % (parameters.INT32_MAX + 1),
                             max_pixels=self.max_pixels, options=options)


SETTING_OF_PARAMETER = {
    'tasks': 'tasks', 'diffusion.steps': 'steps', 'diffusion.seed': 'seed',
    'publish.color': 'publish_color', 'publish.points': 'publish_points',
    'points.stride': 'points_stride', 'points.color': 'points_color',
    'depth.color_min': 'depth_color_min', 'depth.color_max': 'depth_color_max',
    'input.max_pixels': 'max_pixels', 'watchdog.timeout': 'watchdog_timeout',
}

FLOAT_SETTINGS = ('depth_color_min', 'depth_color_max', 'watchdog_timeout')


def settings_from(values, model_tasks):
    """The Settings of the parameter ``values`` (name -> value), tasks in model order."""
    fields = {setting: values[name] for name, setting in SETTING_OF_PARAMETER.items()}
    fields['tasks'] = parameters.selected_tasks(fields['tasks'], model_tasks)
    for setting in FLOAT_SETTINGS:
        fields[setting] = float(fields[setting])
    return Settings(**fields)


def check_changes(changed, current, engine, model_tasks):
    """The reason to reject parameter changes ``changed`` (rclpy Parameters), or None.

    ``current``: the present depth.color_min and depth.color_max (name -> value).
    While unconfigured (``engine`` None, no model yet) tasks and diffusion.steps are
    checked against the model at configure.
    """
    current = dict(current)
    for parameter in changed:
        spec = parameters.SPEC_BY_NAME.get(parameter.name)
        if spec is None:
            continue
        value = parameter.value
        if parameter.name == 'tasks':
            reason = parameters.check_tasks(value or [], model_tasks
                                            if engine is not None else value or [])
        elif parameter.name == 'diffusion.steps':
            reason = parameters.check_value(spec, value)
            if engine is not None and not reason:
                reason = parameters.check_steps(value, engine)
        else:
            reason = parameters.check_value(spec, value)
        if parameter.name in current:
            current[parameter.name] = value
        if reason:
            return reason
    return parameters.check_depth_range(current['depth.color_min'],
                                        current['depth.color_max'])


def apply_changes(settings, changed, engine, model_tasks, is_diffusion):
    """(new Settings, {setting: value} changed) after accepted parameter changes."""
    updates = {}
    for parameter in changed:
        setting = SETTING_OF_PARAMETER.get(parameter.name)
        if setting is None:
            continue
        value = parameter.value
        if setting == 'tasks':
            value = parameters.selected_tasks(value, model_tasks)
        elif setting == 'steps' and is_diffusion:
            # ONNX Runtime exports a new count in the background; the old one serves.
            engine.prepare_steps(value or None)
        elif setting in FLOAT_SETTINGS:
            value = float(value)
        updates[setting] = value
    if updates:
        settings = replace(settings, **updates)
    return settings, updates
