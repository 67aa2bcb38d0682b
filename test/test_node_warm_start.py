"""A TaskDiffusion node on video: diffusion.warm_start switched on and off while frames flow.

Also a node with two cameras: each keeps its own previous map.

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

    def __init__(self, node, client, prefix=NAMESPACE, node_name=NODE, status=None):
        self.node, self.client, self.node_name = node, client, node_name
        self.edges_topic = f'{prefix}/edges'
        self.publisher = client.publisher(Image, f'{prefix}/image', reliable=True)
        self.stamp_ns = 1_000 * 1_000_000_000
        self.status = status        # the name of this camera's /diagnostics status

    def edges(self, rgb, timeout=60.0):
        self.stamp_ns += PERIOD_NS
        stamp = Time(sec=self.stamp_ns // 1_000_000_000, nanosec=self.stamp_ns % 1_000_000_000)
        self.publisher.publish(image_msg(rgb, stamp=stamp))
        assert self.client.wait_for_stamp([self.edges_topic], stamp, timeout), self.node.log()
        return image_msg_to_numpy(self.client.messages_with_stamp(self.edges_topic, stamp)[0])

    def set(self, **values):
        results = self.client.set_parameters(self.node_name, {k.replace('__', '.'): v
                                                              for k, v in values.items()})
        return [r.reason for r in results if not r.successful]

    def diagnostics(self, predicate, timeout=30.0):
        """The values of the first /diagnostics status from now on satisfying ``predicate``.

        (Of this camera's status when ``status`` names it.)
        """
        received = self.client.received['/diagnostics']
        received.clear()
        found = []

        def check():
            for array in received:
                for status in array.status:
                    if self.status is not None and status.name != self.status:
                        continue
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


TWO = '/warm_two_cameras'


@pytest.fixture(scope='module')
def two_cameras(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_warm_two')
    params = {'model.preset': write_config(directory, TINY_TASKDIFFUSION, 'tiny_td.json'),
              'cameras': ['front', 'rear'], 'input.qos': 'reliable', 'tasks': ['edge'],
              'diffusion.steps': 1, 'diffusion.warm_start': True,
              'diffusion.warm_strength': 0.05, 'diagnostics.period': 0.2,
              'watchdog.timeout': 600.0}
    topics = {name: f'{TWO}/{name}' for name in ('front', 'rear')}
    with serving_node(domain_id(__name__), directory, params, namespace=TWO,
                      subscriptions=[(Image, f'{t}/edges') for t in topics.values()]
                      + [(DiagnosticArray, '/diagnostics')],
                      publishers=[(Image, f'{t}/image') for t in topics.values()],
                      inputs=[f'{t}/image' for t in topics.values()],
                      outputs=[f'{t}/edges' for t in topics.values()],
                      ready_timeout=120) as (node, client):
        yield {name: Camera(node, client, prefix, f'{TWO}/mtdp_perception',
                            f'{TWO[1:]}/mtdp_perception: perception {name}')
               for name, prefix in topics.items()}


def test_two_cameras_keep_separate_state(two_cameras):
    front, rear = two_cameras['front'], two_cameras['rear']
    # Frames alternate between the cameras, each showing its own scene: one shared map
    # would see a scene cut at every frame and never start warm.
    front_cold, rear_cold = front.edges(SCENE), rear.edges(CUT)
    front_warm, rear_warm = front.edges(SCENE), rear.edges(CUT)
    assert differs(front_warm, front_cold) and differs(rear_warm, rear_cold)
    for camera in (front, rear):
        values = camera.diagnostics(lambda v: v.get('warm_start_warm_frames') == '1')
        assert values['warm_start_last'] == 'warm'
        assert values['warm_start_cold_frames'] == '1'
        assert values['warm_start_last_cold_reason'] == 'no previous map (start)'
    # A scene cut on the rear camera leaves the front camera warm.
    rear.edges(SCENE)
    values = rear.diagnostics(lambda v: v.get('warm_start_cold_frames') == '2')
    assert values['warm_start_last_cold_reason'].startswith('scene cut')
    assert differs(front.edges(SCENE), front_cold)
    values = front.diagnostics(lambda v: v.get('warm_start_warm_frames') == '2')
    assert values['warm_start_cold_frames'] == '1'
