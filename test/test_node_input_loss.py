"""Frames lost before the callback are counted in /diagnostics, over real DDS.

A burst of small frames, published as fast as the test client can, overflows the node's
image subscription history (``input.qos_depth`` 1, reliable): DDS replaces frames before
the callback sees them. /diagnostics then accounts for every frame of the burst:
``frames_in`` (callbacks) plus ``lost_before_callback`` grows by the burst's length.
"""

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from ros_harness import (NODE_NAME, TINY_MLORE, domain_id, image_msg, make_stamp,
                         pattern_image, serving_node, write_config)

pytestmark = pytest.mark.slow

BURST = 500
STATUS_NAME = f'{NODE_NAME}: perception'


def newest_diagnostics(client):
    """The key/values of the newest status of the node ({} if none)."""
    return client.newest_status(STATUS_NAME)


def accounted(values):
    """Frames the node received or knows it lost (-1 without the counts)."""
    if 'frames_in' not in values or 'lost_before_callback' not in values:
        return -1
    return int(values['frames_in']) + int(values['lost_before_callback'])


def test_a_burst_that_overflows_the_history_is_counted_as_lost(tmp_path):
    config = write_config(tmp_path, TINY_MLORE)
    params = {'model.preset': config, 'input.qos': 'reliable', 'input.qos_depth': 1,
              'diagnostics.period': 0.5}
    with serving_node(domain_id(__name__), tmp_path, params,
                      [(DiagnosticArray, '/diagnostics')]) as (node, client):
        publisher = client.publisher(Image, 'image', reliable=True)
        msg = image_msg(pattern_image(48, 64), stamp=make_stamp())
        # Frames until one is received: the first received starts the count (what came
        # before it is not known; the very first may go out before the writer matched).
        for _ in range(60):
            publisher.publish(msg)
            if client.spin_until(lambda: accounted(newest_diagnostics(client)) >= 1, 1.0):
                break
        # The count before the burst: unchanged over two diagnostics messages.
        before = None
        while before != accounted(newest_diagnostics(client)):
            before = accounted(newest_diagnostics(client))
            for _ in range(2):
                client.received['/diagnostics'].clear()
                assert client.spin_until(lambda: newest_diagnostics(client), 30.0)
        assert before >= 1, (newest_diagnostics(client), node.log())
        for _ in range(BURST):
            publisher.publish(msg)
        client.spin_until(lambda: accounted(newest_diagnostics(client)) >= before + BURST,
                          120.0)
        values = newest_diagnostics(client)
        assert accounted(values) == before + BURST, (values, node.log())
        assert int(values['lost_before_callback']) > 0, values
