"""QoS through rclpy's standard qos_overrides.* parameters, and the deprecated aliases.

Three node processes in one ROS domain, started at once: per-topic overrides (a
best-effort camera), the deprecated input.qos / output.qos_depth, and an override value
rclpy cannot use (configure fails naming the parameter). The defaults are checked in
test_node_lifecycle.py (its reliable node).
"""

import time

import pytest
from sensor_msgs.msg import Image

from ros_harness import (RELIABLE, TINY_MLORE, domain_id, image_msg, make_stamp,
                         node_processes, pattern_image, write_config)

# Slow (node processes over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

BAD_OVERRIDE = 'qos_overrides./bad/image.subscription.reliability'


@pytest.fixture(scope='module')
def processes(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_qos')
    config = write_config(directory, TINY_MLORE)
    specs = {
        # rclpy's standard QoS parameters, per topic (the README's best-effort camera).
        'overridden': {
            'namespace': '/loose',
            'params': {'model.preset': config,
                       'qos_overrides./loose/image.subscription.reliability': 'best_effort',
                       'qos_overrides./loose/depth/image.publisher.reliability': 'best_effort',
                       'qos_overrides./loose/depth/image.publisher.depth': 3}},
        # The deprecated parameters still set the defaults, with a warning.
        'legacy': {
            'namespace': '/legacy',
            'params': {'model.preset': config, 'input.qos': 'sensor_data',
                       'output.qos_depth': 4}},
        'bad': {'namespace': '/bad',
                'params': {'model.preset': config, BAD_OVERRIDE: 'sometimes'}},
    }
    with node_processes(domain_id(__name__), directory, specs) as (started, client):
        yield started, client


def test_a_qos_override_rclpy_cannot_use_fails_configure_naming_it(processes):
    started, _ = processes
    process = started['bad']
    assert process.process.wait(120) == 1, process.log()
    assert (f"invalid QoS override: {BAD_OVERRIDE} must be one of ['reliable', "
            "'best_effort', 'system_default'], got 'sometimes'") in process.log()
    assert 'Traceback' not in process.log()
    # Checked before the model loads.
    assert 'engine:' not in process.log()


def reliabilities(infos):
    """The reliability names of publishers' or subscriptions' endpoint infos."""
    return [info.qos_profile.reliability.name.lower() for info in infos]


def test_qos_overrides_set_each_topic(processes):
    started, client = processes
    node = started['overridden']
    assert node.wait_for_log('ready', 90), node.log()
    assert 'waiting for images on /loose/image (best_effort, keep_last 5)' in node.log()
    graph = client.node
    assert client.spin_until(lambda: all(
        [graph.get_subscriptions_info_by_topic('/loose/image'),
         graph.get_subscriptions_info_by_topic('/loose/camera_info'),
         graph.get_publishers_info_by_topic('/loose/depth/image'),
         graph.get_publishers_info_by_topic('/loose/depth/color')]), 20)
    assert reliabilities(graph.get_subscriptions_info_by_topic('/loose/image')) == \
        ['best_effort']
    assert reliabilities(graph.get_subscriptions_info_by_topic('/loose/camera_info')) == \
        ['reliable']
    assert reliabilities(graph.get_publishers_info_by_topic('/loose/depth/image')) == \
        ['best_effort']
    assert reliabilities(graph.get_publishers_info_by_topic('/loose/depth/color')) == \
        ['reliable']
    values = client.get_parameters('/loose/mtdp_perception',
                                   ['qos_overrides./loose/depth/image.publisher.depth'])
    assert values == {'qos_overrides./loose/depth/image.publisher.depth': 3}
    # A best-effort camera is served (it would never reach a reliable subscription).
    client.subscribe(Image, '/loose/depth/color', RELIABLE)
    publisher = client.publisher(Image, '/loose/image', reliable=False)
    assert client.wait_for_subscribers('/loose/image')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.received['/loose/depth/color']:
        publisher.publish(image_msg(pattern_image(48, 64), stamp=make_stamp()))
        client.spin_for(0.5)
    assert client.received['/loose/depth/color'], node.log()


def test_deprecated_qos_parameters_still_set_the_defaults(processes):
    started, client = processes
    node = started['legacy']
    assert node.wait_for_log('ready', 90), node.log()
    log = node.log()
    assert "input.qos is deprecated: use the standard parameter qos_overrides./<topic>." \
           "subscription.reliability" in log, log
    assert 'output.qos_depth is deprecated' in log and 'input.qos_depth' not in log
    values = client.get_parameters('/legacy/mtdp_perception', [
        'qos_overrides./legacy/image.subscription.reliability',
        'qos_overrides./legacy/semantic/labels.publisher.depth'])
    assert list(values.values()) == ['best_effort', 4]
