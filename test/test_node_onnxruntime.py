"""The node on the ONNX Runtime backend (CPU provider), end to end over real DDS.

A TaskDiffusion node exports its graph into a cache directory at start-up. Changing
``diffusion.steps`` exports the new count in the background: every frame keeps being
answered with the old count meanwhile, then the new count takes over. A node given a fixed
``.onnx`` file refuses step counts that file was not exported for, with the reason. A node
with several cameras exports a dynamic-batch graph and runs their frames in one graph run.
"""

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_output import image_msg_to_numpy

from ros_harness import (NODE_NAME, TINY_MLORE, TINY_TASKDIFFUSION, domain_id, image_msg,
                         make_stamp, node_processes, pattern_image, serving_node,
                         write_checkpoint, write_config)

# Slow (node processes over real DDS, ONNX exports): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# One trained step: the start-up export is the shortest one.
TINY_ONE_STEP = {**TINY_TASKDIFFUSION, 'trained_steps': 1}
STEPS_READY = '2 steps ready'


def _node(preset, cache_dir):
    """NodeProcess arguments of an ONNX Runtime node exporting into ``cache_dir``."""
    return {'params': {'model.preset': preset, 'engine.backend': 'onnxruntime',
                       'engine.device': 'cpu', 'input.qos': 'reliable', 'tasks': ['edge']},
            'env': {'MTDP_CACHE_DIR': str(cache_dir)}}


@pytest.fixture(scope='module')
def ort_node(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_ort')
    cache_dir = directory / 'cache'
    preset = write_config(directory, TINY_ONE_STEP, 'tiny_td_ort.json')
    arguments = _node(preset, cache_dir)
    with serving_node(domain_id(__name__), directory, arguments['params'],
                      subscriptions=[(Image, 'edges')], ready_timeout=180, outputs=['edges'],
                      env=arguments['env']) as (node, client):
        yield node, client, client.publisher(Image, 'image', reliable=True), directory, \
            cache_dir


def _answer(client, publisher, node, rgb, timeout=30.0):
    """Publish one frame and wait for its edge map (lockstep: one frame in flight)."""
    stamp = make_stamp()
    publisher.publish(image_msg(rgb, stamp=stamp))
    assert client.wait_for_stamp(['edges'], stamp, timeout), node.log()
    return image_msg_to_numpy(client.messages_with_stamp('edges', stamp)[0])


def test_steps_change_exports_in_the_background_while_outputs_flow(ort_node):
    node, client, publisher, _, _ = ort_node
    assert 'backend onnxruntime' in node.log()
    rgb = pattern_image(60, 80, seed=4)
    one_step = _answer(client, publisher, node, rgb)
    (result,) = client.set_parameters(NODE_NAME, {'diffusion.steps': 2})
    assert result.successful, result.reason
    during_export, switched = 0, None
    for _ in range(2000):
        edges = _answer(client, publisher, node, rgb)
        if np.array_equal(edges, one_step):
            # Still the old count: it must be because the export has not finished yet.
            if STEPS_READY not in node.log():
                during_export += 1
            continue
        switched = edges
        break
    assert switched is not None, node.log()
    assert STEPS_READY in node.log()
    assert during_export >= 1, 'no frame was answered during the background export'
    # The new count keeps serving, deterministically (same input, same seed).
    np.testing.assert_array_equal(_answer(client, publisher, node, rgb), switched)
    assert 'rejected' not in node.log() and 'frame failed' not in node.log()
    assert 'exporting' in node.log() and 'for 2 steps' in node.log()


def test_fixed_onnx_file_refuses_other_step_counts(ort_node):
    node, client, publisher, directory, cache_dir = ort_node
    exported = sorted((cache_dir / 'onnx').glob('*-s1.onnx'))
    assert len(exported) == 1, list((cache_dir / 'onnx').iterdir())
    domain = domain_id(__name__ + '.fixed')
    specs = {'fixed': _node(str(exported[0]), directory / 'unused_cache')}
    with node_processes(domain, directory, specs) as (started, fixed_client):
        fixed = started['fixed']
        assert fixed.wait_for_log('ready', 120), fixed.log()
        (result,) = fixed_client.set_parameters(NODE_NAME, {'diffusion.steps': 5})
        assert not result.successful
        assert 'exported for 1 steps' in result.reason and 'cannot run 5' in result.reason
        (result,) = fixed_client.set_parameters(NODE_NAME, {'diffusion.steps': 1})
        assert result.successful, result.reason
        # Nothing was exported for the refused count.
        assert not (directory / 'unused_cache').exists()


def test_several_cameras_run_as_one_batch_through_one_graph(tmp_path):
    """Two cameras of different sizes: one dynamic-batch graph serves both, in batches."""
    from mtdp_ros.runtime import create_engine
    cameras = {'front': (64, 48), 'left': (90, 120)}
    namespace = '/ort_cameras'
    preset = write_checkpoint(tmp_path, TINY_MLORE)
    params = {'model.preset': preset, 'engine.backend': 'onnxruntime', 'engine.device': 'cpu',
              'cameras': list(cameras), 'input.qos': 'reliable', 'tasks': ['semseg'],
              'diagnostics.period': 0.5}
    labels = {c: f'{namespace}/{c}/semantic/labels' for c in cameras}
    images = {c: f'{namespace}/{c}/image' for c in cameras}
    engine_status = f"{namespace.lstrip('/')}/{NODE_NAME}: engine"
    with serving_node(domain_id(__name__ + '.cameras'), tmp_path, params,
                      [(Image, t) for t in labels.values()] + [(DiagnosticArray, '/diagnostics')],
                      publishers=[(Image, t) for t in images.values()], namespace=namespace,
                      inputs=list(images.values()), outputs=list(labels.values()),
                      ready_timeout=180, env={'MTDP_CACHE_DIR': str(tmp_path / 'cache')}) \
            as (node, client):
        assert 'exporting' in node.log()
        rgb = {c: pattern_image(h, w, seed=len(c)) for c, (w, h) in cameras.items()}

        def send_burst(rounds=4):
            """Frames of both cameras, back to back; waits for the last round's outputs."""
            for _ in range(rounds):
                stamps = {c: make_stamp() for c in cameras}
                for camera, stamp in stamps.items():
                    client.publisher(Image, images[camera], reliable=True).publish(
                        image_msg(rgb[camera], stamp=stamp))
            assert client.spin_until(lambda: all(client.messages_with_stamp(labels[c], s)
                                                 for c, s in stamps.items()), 60), node.log()
            return stamps

        def batched():
            sizes = client.newest_status(engine_status).get('batch_size_histogram', '')
            return any(part.startswith('2:') for part in sizes.split(',') if part)

        # Frames of both cameras arrive while a batch runs, so batches of two form (older
        # frames of a camera give way to its newest: the last round is always answered).
        for _ in range(50):
            stamps = send_burst()
            if client.spin_until(batched, 1.0):
                break
        status = client.newest_status(engine_status)
        assert batched(), status
        assert status['batch_in_one_pass'] == 'true' and status['backend'] == 'onnxruntime'
        reference = create_engine(preset, device='cpu')
        for camera, (width, height) in cameras.items():
            (msg,) = client.messages_with_stamp(labels[camera], stamps[camera])
            got = image_msg_to_numpy(msg)
            assert got.shape == (height, width)
            expected = reference.infer(rgb[camera], tasks=['semseg'])['semseg']
            assert np.mean(got == expected) > 0.999, camera
        assert 'rejected' not in node.log() and 'frame failed' not in node.log()
