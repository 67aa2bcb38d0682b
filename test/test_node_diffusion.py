"""A TaskDiffusion node: diffusion.steps and diffusion.seed take effect while it runs."""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_output import image_msg_to_numpy

from ros_harness import (NODE_NAME, TINY_TASKDIFFUSION, domain_id, image_msg, make_stamp,
                         pattern_image, serving_node, write_config)


# Slow (a node process over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def diffusion_node(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_diffusion')
    params = {'model.preset': write_config(directory, TINY_TASKDIFFUSION, 'tiny_td.json'),
              'input.qos': 'reliable', 'tasks': ['edge', 'normals'], 'diffusion.steps': 1}
    with serving_node(domain_id(__name__), directory, params,
                      subscriptions=[(Image, 'edges'), (DiagnosticArray, '/diagnostics')],
                      ready_timeout=90, outputs=['edges']) as (node, client):
        yield node, client, client.publisher(Image, 'image', reliable=True)


def edges_for(diffusion_node, rgb, timeout=20.0):
    """Publish ``rgb`` until the node answers; its edge map."""
    node, client, publisher = diffusion_node
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = make_stamp()
        publisher.publish(image_msg(rgb, stamp=stamp))
        if client.wait_for_stamp(['edges'], stamp, 2.0):
            return image_msg_to_numpy(client.messages_with_stamp('edges', stamp)[0])
    raise AssertionError('no answer: ' + node.log())


def set_ok(client, **values):
    results = client.set_parameters(NODE_NAME, {k.replace('__', '.'): v
                                                for k, v in values.items()})
    assert all(r.successful for r in results), [r.reason for r in results]


def test_steps_and_seed_change_the_outputs_while_running(diffusion_node):
    node, client, publisher = diffusion_node
    rgb = pattern_image(60, 80, seed=2)
    one_step = edges_for(diffusion_node, rgb)
    assert one_step.shape == (60, 80)
    set_ok(client, diffusion__steps=3)
    three_steps = edges_for(diffusion_node, rgb)
    # Same input, same seed: outputs are bit-identical unless the setting took effect.
    assert np.abs(three_steps - one_step).max() > 1e-6
    set_ok(client, diffusion__steps=1)
    np.testing.assert_array_equal(edges_for(diffusion_node, rgb), one_step)
    set_ok(client, diffusion__seed=7)
    assert np.abs(edges_for(diffusion_node, rgb) - one_step).max() > 1e-6
    # 0 = the steps the model was trained with (3 for this config).
    set_ok(client, diffusion__seed=0, diffusion__steps=0)
    np.testing.assert_array_equal(edges_for(diffusion_node, rgb), three_steps)
    client.received['/diagnostics'].clear()
    assert client.spin_until(lambda: client.received['/diagnostics'], 5)
    values = {kv.key: kv.value for kv in client.received['/diagnostics'][-1].status[0].values}
    assert values['diffusion_steps'] == '3'
    assert values['family'] == 'taskdiffusion'


def test_out_of_range_steps_are_rejected(diffusion_node):
    node, client, publisher = diffusion_node
    (result,) = client.set_parameters(NODE_NAME, {'diffusion.steps': 101})
    assert not result.successful
    assert 'out of range' in result.reason
