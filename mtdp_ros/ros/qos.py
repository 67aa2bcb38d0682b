"""QoS profiles by name ('sensor_data' | 'reliable'), and their description for logs."""

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

QOS_NAMES = ('sensor_data', 'reliable')


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
    reliability = 'reliable' if profile.reliability == ReliabilityPolicy.RELIABLE \
        else 'best_effort'
    return f'{reliability}, keep_last {profile.depth}'
