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
from mtdp_ros.runtime.warm_runner import WarmStartSettings


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
    warm_start: bool = False
    warm_strength: float = WarmStartSettings.strength
    warm_max_gap_s: float = WarmStartSettings.max_gap_s
    warm_cut_threshold: float = WarmStartSettings.cut_threshold

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
        # Checked by the parameter callbacks (ranges, the engine) before they got here.
        warm = WarmStartSettings(self.warm_start, self.warm_strength, self.warm_max_gap_s,
                                 self.warm_cut_threshold)
        return FrameSettings(tasks=self.tasks, steps=self.steps or None,
                             seed=(self.seed + camera_index) % (parameters.INT32_MAX + 1),
                             max_pixels=self.max_pixels, options=options, warm=warm)


SETTING_OF_PARAMETER = {
    'tasks': 'tasks', 'diffusion.steps': 'steps', 'diffusion.seed': 'seed',
    'publish.color': 'publish_color', 'publish.points': 'publish_points',
    'points.stride': 'points_stride', 'points.color': 'points_color',
    'depth.color_min': 'depth_color_min', 'depth.color_max': 'depth_color_max',
    'input.max_pixels': 'max_pixels', 'watchdog.timeout': 'watchdog_timeout',
    'diffusion.warm_start': 'warm_start', 'diffusion.warm_strength': 'warm_strength',
    'diffusion.warm_max_gap_s': 'warm_max_gap_s',
    'diffusion.warm_cut_threshold': 'warm_cut_threshold',
}

FLOAT_SETTINGS = ('depth_color_min', 'depth_color_max', 'watchdog_timeout', 'warm_strength',
                  'warm_max_gap_s', 'warm_cut_threshold')


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
        elif parameter.name == 'diffusion.warm_start':
            reason = parameters.check_value(spec, value)
            if engine is not None and not reason:
                reason = parameters.check_warm_start(value, engine)
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
