"""QoS of the node's topics: defaults, rclpy's standard ``qos_overrides.*`` parameters.

Every image subscription, camera_info subscription and output publisher is created with
``QoSOverridingOptions.with_default_policies()``, so its history, depth and reliability
follow the standard read-only parameters (as in every rclpy and rclcpp node)::

    qos_overrides./camera/image_raw.subscription.reliability: best_effort
    qos_overrides./mtdp_perception/depth/image.publisher.depth: 2

(the fully qualified topic, after namespace and remapping). The defaults are the
measured ones (README, Transport and QoS): inputs reliable, keep_last 5; outputs
reliable, keep_last 10. The deprecated ``input.qos``/``input.qos_depth``/``output.qos``/
``output.qos_depth`` parameters still change those defaults (aliases, with a warning).

:func:`declare_overrides` declares the parameters before rclpy does (same names, same
read-only descriptors; rclpy then uses them) and checks their values, so a mistyped
override is a configure failure naming the parameter, not an exception from deep inside
``create_subscription``.
"""

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterAlreadyDeclaredException
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions

QOS_NAMES = ('sensor_data', 'reliable')
# Defaults of the deprecated aliases, which are the measured defaults.
INPUT_DEFAULTS = {'input.qos': 'reliable', 'input.qos_depth': 5}
OUTPUT_DEFAULTS = {'output.qos': 'reliable', 'output.qos_depth': 10}
# The policies QoSOverridingOptions.with_default_policies() makes parameters of.
POLICY_CHOICES = {
    'history': ('keep_last', 'keep_all', 'system_default'),
    'reliability': ('reliable', 'best_effort', 'system_default'),
}


def qos_profile(kind, depth):
    """'sensor_data' (best effort, volatile) or 'reliable' (volatile), keep-last ``depth``."""
    if kind == 'sensor_data':
        return QoSProfile(history=qos_profile_sensor_data.history, depth=depth,
                          reliability=qos_profile_sensor_data.reliability,
                          durability=qos_profile_sensor_data.durability)
    if kind == 'reliable':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    raise ValueError(f'QoS must be one of {list(QOS_NAMES)}, got {kind!r}')


def describe_qos(profile):
    """'best_effort, keep_last 5' style text of a QoS profile."""
    reliability = profile.reliability.name.lower()
    history = profile.history.name.lower()
    if profile.history == HistoryPolicy.KEEP_LAST:
        history += f' {profile.depth}'
    return f'{reliability}, {history}'


def overriding_options():
    """The QoSOverridingOptions of every topic of the node (history, depth, reliability)."""
    return QoSOverridingOptions.with_default_policies()


def override_name(topic, entity, policy):
    """The standard parameter of ``policy`` of a 'subscription' or 'publisher' on ``topic``.

    ``topic``: fully qualified (the node's resolve_topic_name).
    """
    return f'qos_overrides.{topic}.{entity}.{policy}'


def deprecated_aliases(values):
    """Warnings for the deprecated QoS parameters set away from their defaults."""
    warnings = []
    for name, default in {**INPUT_DEFAULTS, **OUTPUT_DEFAULTS}.items():
        if name in values and values[name] != default:
            entity = 'subscription' if name.startswith('input') else 'publisher'
            policy = 'depth' if name.endswith('depth') else 'reliability'
            warnings.append(f'{name} is deprecated: use the standard parameter '
                            f'qos_overrides./<topic>.{entity}.{policy} (README, Transport '
                            f'and QoS); {name}={values[name]!r} sets its default for now')
    return warnings


def declare_overrides(node, topic, entity, default):
    """(profile, problem): ``default`` with the qos_overrides of ``topic`` applied.

    Declares ``qos_overrides.<topic>.<entity>.{history,depth,reliability}`` (read-only,
    values from the command line or a parameters file, else from ``default``) unless
    declared already; ``problem`` is None, or the reason a value cannot be used.
    """
    profile = QoSProfile(history=default.history, depth=default.depth,
                         reliability=default.reliability, durability=default.durability)
    defaults = {'history': default.history.name.lower(), 'depth': default.depth,
                'reliability': default.reliability.name.lower()}
    problem = None
    for policy, value in defaults.items():
        name = override_name(topic, entity, policy)
        descriptor = ParameterDescriptor(
            description=f'{policy} for {entity} `{topic}` with id `None`', read_only=True)
        try:
            value = node.declare_parameter(name, value, descriptor).value
        except ParameterAlreadyDeclaredException:
            value = node.get_parameter(name).value
        except Exception as exc:  # noqa: B902 - rclpy's type errors name no parameter
            problem = problem or f'{name}: {exc}'
            continue
        reason = _check(policy, value)
        if reason:
            problem = problem or f'{name} {reason}, got {value!r}'
            continue
        if policy == 'depth':
            profile.depth = value
        elif policy == 'history':
            profile.history = HistoryPolicy[value.upper()]
        else:
            profile.reliability = ReliabilityPolicy[value.upper()]
    if problem is None and profile.history == HistoryPolicy.KEEP_LAST and profile.depth < 1:
        problem = f'{override_name(topic, entity, "depth")} must be at least 1 with keep_last'
    return profile, problem


def _check(policy, value):
    if policy == 'depth':
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return 'must be a whole number >= 0'
        return None
    if not isinstance(value, str) or value.lower() not in POLICY_CHOICES[policy]:
        return f'must be one of {list(POLICY_CHOICES[policy])}'
    return None
