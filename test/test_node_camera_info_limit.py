"""input.max_pixels bounds what a camera_info can make the node allocate, over real DDS.

Configure warms the engine up at the camera_info's size (an image of that size and the
outputs at it): a camera_info declaring more pixels than ``input.max_pixels`` is refused
with the reason in the log and in /diagnostics (``camera_info_problem``), and configure
then warms nothing up. A camera_info within the limit is used; a limit lowered at run
time stops the warm-up at a size over it.
"""

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo

from ros_harness import (NODE_NAME, TINY_MLORE, camera_info, domain_id, node_processes,
                         write_config)

pytestmark = pytest.mark.slow

# 640 x 480 is over this limit, 320 x 240 within it (small sizes: the test also runs on
# code without the limit, where the warm-up at the refused size must stay cheap).
LIMIT = 100_000
STATUS_NAME = f'{NODE_NAME}: perception'


def newest_diagnostics(client):
    """The key/values of the newest status of the node ({} if none)."""
    return client.newest_status(STATUS_NAME)


def send_until_logged(client, node, info, text, timeout=60.0):
    """Publish ``info`` until ``text`` is in the node's log (discovery takes a while)."""
    publisher = client.publisher(CameraInfo, 'camera_info', reliable=True)
    for _ in range(int(timeout)):
        publisher.publish(info)
        client.spin_for(0.5)
        if text in node.log():
            return True
    return text in node.log()


def test_a_camera_info_over_max_pixels_is_refused_and_warms_nothing_up(tmp_path):
    config = write_config(tmp_path, TINY_MLORE)
    params = {'model.preset': config, 'autostart': False, 'input.max_pixels': LIMIT,
              'diagnostics.period': 0.5}
    specs = {'node': {'params': params}}
    with node_processes(domain_id(__name__), tmp_path, specs,
                        [(DiagnosticArray, '/diagnostics')]) as (started, client):
        node = started['node']
        assert node.wait_for_log('autostart is false', 60.0), node.log()
        assert send_until_logged(client, node, camera_info(640, 480), 'ignoring camera_info')
        assert f'640x480 = 307200 pixels, more than input.max_pixels ({LIMIT})' in node.log()
        client.spin_until(lambda: 'camera_info_problem' in newest_diagnostics(client), 30.0)
        assert '640x480' in newest_diagnostics(client).get('camera_info_problem', ''), \
            newest_diagnostics(client)
        assert client.change_state(NODE_NAME, 'configure', timeout=120.0), node.log()
        assert 'warmed up' not in node.log()

        # Within the limit: used, and configure warms up at its size.
        assert send_until_logged(client, node, camera_info(320, 240), 'camera_info: 320x240')
        client.spin_until(lambda: 'camera_info_problem' not in newest_diagnostics(client),
                          30.0)
        assert 'camera_info_problem' not in newest_diagnostics(client)
        assert client.change_state(NODE_NAME, 'cleanup', timeout=60.0), node.log()
        assert client.change_state(NODE_NAME, 'configure', timeout=120.0), node.log()
        assert 'warmed up at the camera size 320x240' in node.log()

        # The limit lowered under the size already known: no warm-up at that size.
        result = client.set_parameters(NODE_NAME, {'input.max_pixels': 320 * 240 - 1})
        assert result[0].successful, result[0].reason
        assert client.change_state(NODE_NAME, 'cleanup', timeout=60.0), node.log()
        assert client.change_state(NODE_NAME, 'configure', timeout=120.0), node.log()
        assert 'no warm-up at the camera size 320x240' in node.log()
        assert node.log().count('warmed up at the camera size') == 1
