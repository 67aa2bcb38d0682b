"""Lifecycle transitions while a frame takes seconds, over real DDS.

A tiny MLoRE with a 1024 x 1536 input takes seconds per frame on a CPU (about 6 s on the
2-core VM). While such a frame is in flight: /diagnostics keep coming, parameters are
read and set, deactivate and cleanup answer before the frame ends, and nothing of that
frame is ever published (the node logs that it dropped its outputs). The node then
configures, activates and serves again. Every step waits on an event (a message, a
service answer, a log line), not on time.
"""

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import Image

from ros_harness import (NODE_NAME, TINY_MLORE, domain_id, image_msg, make_stamp,
                         pattern_image, serving_node, write_config)

pytestmark = pytest.mark.slow

# Seconds per frame grow with the square of the token count: 96 x 64 tokens here.
SLOW_MLORE = dict(TINY_MLORE, image_size=[1024, 1536])
DROPPED = 'were dropped'
STATUS_NAME = f'{NODE_NAME}: perception'


def newest_diagnostics(client):
    """The key/values of the newest status of the node ({} if none)."""
    return client.newest_status(STATUS_NAME)


def next_diagnostics(client, predicate, timeout=60.0):
    """Spin until a new diagnostics message satisfies ``predicate``; its values or {}."""
    client.received['/diagnostics'].clear()
    client.spin_until(lambda: predicate(newest_diagnostics(client)), timeout)
    values = newest_diagnostics(client)
    return values if predicate(values) else {}


def get_parameter(client, name, timeout=30.0):
    """The value message of the node's parameter ``name`` (through ~/get_parameters)."""
    request = GetParameters.Request()
    request.names = [name]
    return client._call(GetParameters, f'{NODE_NAME}/get_parameters', request,
                        timeout).values[0]


def test_transitions_during_a_slow_frame_return_and_publish_nothing_of_it(tmp_path):
    config = write_config(tmp_path, SLOW_MLORE, name='slow_mlore.json')
    params = {'model.preset': config, 'input.qos': 'reliable', 'diagnostics.period': 0.5}
    subscriptions = [(Image, 'depth/image'), (DiagnosticArray, '/diagnostics')]
    with serving_node(domain_id(__name__), tmp_path, params, subscriptions,
                      outputs=('depth/image',), ready_timeout=120.0) as (node, client):
        publisher = client.publisher(Image, 'image', reliable=True)
        rgb = pattern_image(480, 640)
        slow = make_stamp()
        publisher.publish(image_msg(rgb, stamp=slow))

        # The frame is in flight: received, not answered. Diagnostics keep coming.
        during = next_diagnostics(client, lambda v: v.get('frames_in') == '1')
        assert during.get('frames_out') == '0', (during, node.log())
        assert during['lifecycle_state'] == 'active'
        # Parameters answer during the frame.
        result = client.set_parameters(NODE_NAME, {'depth.color_max': 7.5}, timeout=60.0)
        assert result[0].successful, result[0].reason
        assert get_parameter(client, 'depth.color_max').double_value == 7.5
        assert not client.messages_with_stamp('depth/image', slow), \
            'the frame ended before the transition: make SLOW_MLORE slower'

        # Deactivate answers before the frame ends, and none of its outputs came.
        assert client.change_state(NODE_NAME, 'deactivate', timeout=120.0)
        assert not client.messages_with_stamp('depth/image', slow), node.log()
        assert DROPPED not in node.log(), 'deactivate waited for the frame'
        after = next_diagnostics(client, lambda v: v.get('lifecycle_state') == 'inactive')
        assert after, node.log()
        result = client.set_parameters(NODE_NAME, {'depth.color_max': 8.0}, timeout=60.0)
        assert result[0].successful, result[0].reason
        assert client.change_state(NODE_NAME, 'cleanup', timeout=120.0)
        cleaned_while_busy = DROPPED not in node.log()

        # The frame ends: its outputs are dropped, and never published.
        assert node.wait_for_log(DROPPED, 180.0), node.log()
        if cleaned_while_busy:
            assert node.wait_for_log('the frame in flight at cleanup ended', 30.0), node.log()
        client.spin_until(lambda: next_diagnostics(client, bool, 10.0), 30.0)
        assert not client.messages_with_stamp('depth/image', slow), node.log()

        # Configured and activated again, the node serves (and counts the dropped frame).
        assert client.change_state(NODE_NAME, 'configure', timeout=120.0), node.log()
        assert client.change_state(NODE_NAME, 'activate', timeout=60.0), node.log()
        assert client.wait_for_subscribers('image'), node.log()
        fresh = make_stamp()
        publisher.publish(image_msg(rgb, stamp=fresh))
        assert client.wait_for_stamp(['depth/image'], fresh, 180.0), node.log()
        values = next_diagnostics(client, lambda v: 'abandoned' in v)
        assert values.get('abandoned') == '1', values
        assert not client.messages_with_stamp('depth/image', slow)
