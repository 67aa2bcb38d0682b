"""A TaskDiffusion node on video: diffusion.warm_start switched on and off while frames flow.

Over real DDS, in its own domain and namespace. Frames are published one at a time with
stamps 50 ms apart (a synthetic camera clock, so that the machine's load cannot make a
time gap) and each output is awaited by its stamp. A cold frame must equal the cold
output bit for bit, a warm frame differ from it; /diagnostics says warm or cold and why.
"""

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_output import image_msg_to_numpy

from ros_harness import (domain_id, image_msg, pattern_image, serving_node,
                         TINY_TASKDIFFUSION, write_config)

# Slow (a node process over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

NAMESPACE = '/warm_video'
NODE = f'{NAMESPACE}/mtdp_perception'
IMAGE = f'{NAMESPACE}/image'
EDGES = f'{NAMESPACE}/edges'
PERIOD_NS = 50_000_000
SCENE = pattern_image(60, 80, seed=4)
CUT = SCENE[::-1, ::-1].copy()          # another picture: a scene cut


class Camera:
    """Publishes frames with stamps on its own clock and returns the node's edge maps."""

    def __init__(self, node, client):
        self.node, self.client = node, client
        self.publisher = client.publisher(Image, IMAGE, reliable=True)
        self.stamp_ns = 1_000 * 1_000_000_000

    def edges(self, rgb, timeout=60.0):
        self.stamp_ns += PERIOD_NS
        stamp = Time(sec=self.stamp_ns // 1_000_000_000, nanosec=self.stamp_ns % 1_000_000_000)
        self.publisher.publish(image_msg(rgb, stamp=stamp))
        assert self.client.wait_for_stamp([EDGES], stamp, timeout), self.node.log()
        return image_msg_to_numpy(self.client.messages_with_stamp(EDGES, stamp)[0])

    def set(self, **values):
        results = self.client.set_parameters(NODE, {k.replace('__', '.'): v
                                                    for k, v in values.items()})
        return [r.reason for r in results if not r.successful]

    def diagnostics(self, predicate, timeout=30.0):
        """The values of the first /diagnostics status from now on satisfying ``predicate``."""
        received = self.client.received['/diagnostics']
        received.clear()
        found = []

        def check():
            for array in received:
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if values.get('lifecycle_state') == 'active' and predicate(values):
                        found.append(values)
            received.clear()
            return bool(found)

        assert self.client.spin_until(check, timeout), self.node.log()
        return found[0]


@pytest.fixture(scope='module')
def camera(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_warm_start')
    params = {'model.preset': write_config(directory, TINY_TASKDIFFUSION, 'tiny_td.json'),
              'input.qos': 'reliable', 'tasks': ['edge'], 'diffusion.steps': 1,
              'diffusion.warm_strength': 0.05, 'diagnostics.period': 0.2}
    with serving_node(domain_id(__name__), directory, params, namespace=NAMESPACE,
                      subscriptions=[(Image, EDGES), (DiagnosticArray, '/diagnostics')],
                      publishers=[(Image, IMAGE)], inputs=[IMAGE], outputs=[EDGES],
                      ready_timeout=120) as (node, client):
        yield Camera(node, client)


def differs(a, b):
    return np.abs(a - b).max() > 1e-6


def test_warm_start_switched_on_and_off_while_frames_flow(camera):
    cold = camera.edges(SCENE)
    np.testing.assert_array_equal(camera.edges(SCENE), cold)        # off: the cold path
    assert camera.set(diffusion__warm_start=True) == []
    np.testing.assert_array_equal(camera.edges(SCENE), cold)        # no previous map yet
    warm = camera.edges(SCENE)
    assert differs(warm, cold)
    assert differs(camera.edges(SCENE), cold)
    values = camera.diagnostics(lambda v: v.get('warm_start_last') == 'warm')
    assert values['warm_start'] == 'true' and values['warm_strength'] == '0.05'
    assert values['warm_start_last_cold_reason'] == 'no previous map (start)'
    assert int(values['warm_start_warm_frames']) == 2

    # The strength changes while running: another warm output.
    assert camera.set(diffusion__warm_strength=0.5) == []
    assert differs(camera.edges(SCENE), warm)

    assert camera.set(diffusion__warm_start=False) == []
    np.testing.assert_array_equal(camera.edges(SCENE), cold)
    values = camera.diagnostics(lambda v: v.get('warm_start') == 'false')
    assert values['warm_start_last'] == 'cold'
    assert values['warm_start_last_cold_reason'] == 'warm start off'
    assert camera.set(diffusion__warm_strength=0.05) == []


def test_a_scene_cut_and_a_deactivation_start_cold(camera):
    assert camera.set(diffusion__warm_start=True, diffusion__warm_cut_threshold=0.5) == []
    cold = camera.edges(SCENE)
    assert differs(camera.edges(SCENE), cold)                        # warm
    camera.edges(CUT)
    values = camera.diagnostics(lambda v: v.get('warm_start_last') == 'cold')
    assert values['warm_start_last_cold_reason'].startswith('scene cut: image change ')
    assert 'cut_threshold 0.5' in values['warm_start_last_cold_reason']
    camera.edges(CUT)
    camera.diagnostics(lambda v: v.get('warm_start_last') == 'warm')

    # Back to the first scene (a cut again), then warm; deactivate forgets the map.
    camera.edges(SCENE)
    assert differs(camera.edges(SCENE), cold)
    matched = camera.publisher.get_subscription_count
    assert camera.client.change_state(NODE, 'deactivate')
    assert camera.client.spin_until(lambda: matched() == 0, 20), camera.node.log()
    assert camera.client.change_state(NODE, 'activate')
    assert camera.client.spin_until(lambda: matched() >= 1, 20), camera.node.log()
    np.testing.assert_array_equal(camera.edges(SCENE), cold)
    values = camera.diagnostics(lambda v: v.get('warm_start_last') == 'cold')
    assert values['warm_start_last_cold_reason'] == 'no previous map (deactivate)'
    assert camera.set(diffusion__warm_start=False) == []


def test_bad_warm_start_values_are_refused_with_a_reason(camera):
    assert 'diffusion.warm_strength must be above 0.0' in camera.set(
        diffusion__warm_strength=0.0)[0]
    assert 'out of range' in camera.set(diffusion__warm_strength=1.5)[0]
    assert 'diffusion.warm_max_gap_s must be above 0.0' in camera.set(
        diffusion__warm_max_gap_s=0.0)[0]
    assert camera.set(diffusion__warm_cut_threshold=-1.0)
