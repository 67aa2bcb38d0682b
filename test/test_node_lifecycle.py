"""Start-up errors, QoS, namespaces and remapping, the watchdog, compressed input, SIGINT.

Every process of this module starts at once (their start-ups overlap) in one ROS domain.
"""

import time

import cv2
import numpy as np
import pytest
import torch
from sensor_msgs.msg import CompressedImage, Image

from ros_harness import (RELIABLE, TINY_MLORE, domain_id, image_msg, make_stamp,
                         node_processes, pattern_image, write_config)

# Slow (node processes over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

STARTUP_ERRORS = {
    'unknown_preset': ({'model.preset': 'no_such_model'}, "unknown model 'no_such_model'"),
    # Every bad choice is reported at once, before the model is loaded.
    'bad_choices': ({'engine.device': 'gpu', 'input.qos': 'fast'},
                    "engine.device must be one of ['auto', 'cuda', 'cpu'], got 'gpu'; "
                    "input.qos must be one of ['sensor_data', 'reliable'], got 'fast'"),
    'unknown_task': ({'tasks': ['depth', 'flow']}, "unknown tasks ['flow']"),
    'steps_range': ({'diffusion.steps': 500}, 'out of range'),
    'missing_checkpoint': ({'model.checkpoint': '/nonexistent/weights.safetensors'},
                           'checkpoint not found: /nonexistent/weights.safetensors'),
    'cuda_absent': ({'engine.device': 'cuda'}, 'CUDA is not available'),
    # A file that is no checkpoint (written by the fixture).
    'wrong_checkpoint': ({'model.checkpoint': 'JUNK'}, 'is not a PyTorch checkpoint'),
}


@pytest.fixture(scope='module')
def processes(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_lifecycle')
    domain = domain_id(__name__)
    config = write_config(directory, TINY_MLORE)
    specs = {
        'default_qos': {
            'namespace': '/robot1',
            'remaps': {'image': '/cam/image_raw', 'camera_info': '/cam/camera_info'},
            'params': {'model.preset': config, 'watchdog.timeout': 1.0}},
        'reliable': {
            'namespace': '/strict',
            'params': {'model.preset': config, 'input.qos': 'reliable',
                       'watchdog.timeout': 1.0}},
        'compressed': {
            'namespace': '/jpeg',
            'params': {'model.preset': config, 'input.transport': 'compressed',
                       'input.qos': 'reliable'}},
    }
    for name, (params, _) in STARTUP_ERRORS.items():
        if name == 'cuda_absent' and torch.cuda.is_available():
            continue
        values = {'model.preset': config}
        values.update(params)
        if values.get('model.checkpoint') == 'JUNK':
            junk = directory / 'junk_weights.pt'
            junk.write_bytes(b'these bytes are not a checkpoint')
            values['model.checkpoint'] = str(junk)
        specs[name] = {'params': values, 'namespace': f'/failing_{name}'}
    with node_processes(domain, directory, specs) as (started, client):
        yield started, client


@pytest.mark.parametrize('name', sorted(STARTUP_ERRORS))
def test_bad_configuration_fails_at_start_with_a_clear_error(processes, name):
    started, _ = processes
    if name not in started:
        pytest.skip('CUDA is available here, so requesting it is no error')
    process = started[name]
    code = process.process.wait(90)
    assert code == 1, process.log()
    words = STARTUP_ERRORS[name][1]
    assert words in process.log(), process.log()
    assert '[ERROR]' in process.log()
    assert 'Traceback' not in process.log()


def test_qos_defaults_are_standard_parameters(processes):
    # Before the tests that stop the 'reliable' node.
    started, client = processes
    node = started['reliable']
    assert node.wait_for_log('ready', 90), node.log()
    names = ['qos_overrides./strict/image.subscription.reliability',
             'qos_overrides./strict/image.subscription.depth',
             'qos_overrides./strict/camera_info.subscription.reliability',
             'qos_overrides./strict/depth/image.publisher.reliability',
             'qos_overrides./strict/depth/image.publisher.depth',
             'qos_overrides./strict/points.publisher.history']
    values = client.get_parameters('/strict/mtdp_perception', names)
    assert list(values.values()) == ['reliable', 5, 'reliable', 'reliable', 10, 'keep_last']
    assert 'deprecated' not in node.log()


def test_default_qos_namespace_remapping_watchdog_and_sigint(processes):
    started, client = processes
    node = started['default_qos']
    client.subscribe(Image, '/robot1/depth/image', RELIABLE)
    client.subscribe(Image, '/robot1/semantic/color', RELIABLE)
    # A reliable camera (the default QoS of ROS publishers), read with the default
    # input.qos: reliable (best effort loses most large frames: README, Transport and QoS).
    publisher = client.publisher(Image, '/cam/image_raw', reliable=True)
    assert node.wait_for_log('ready', 90), node.log()
    # Start-up warnings: random weights, and the CPU fallback of device auto.
    assert 'the weights are random' in node.log().lower()
    if not torch.cuda.is_available():
        assert 'CUDA is not available, running on the CPU' in node.log()
    assert client.wait_for_subscribers('/cam/image_raw'), node.log()
    rgb = pattern_image(48, 64)
    answered = None
    deadline = time.monotonic() + 30
    while answered is None and time.monotonic() < deadline:
        stamp = make_stamp()
        publisher.publish(image_msg(rgb, stamp=stamp))
        if client.wait_for_stamp(['/robot1/depth/image', '/robot1/semantic/color'], stamp, 1.0):
            answered = stamp
    assert answered is not None, node.log()
    msg = client.messages_with_stamp('/robot1/depth/image', answered)[0]
    assert (msg.width, msg.height, msg.encoding) == (64, 48, '32FC1')
    # Silence: the watchdog names the topic, the QoS and the publisher count.
    assert node.wait_for_log('1 publisher(s) exist', 10), node.log()
    warning = [line for line in node.log().splitlines() if '1 publisher(s) exist' in line][-1]
    assert 'no image received on /cam/image_raw' in warning
    assert 'subscribed with QoS reliable, keep_last 5' in warning
    # Ctrl-C while frames keep arriving: exit code 0 within 5 s.
    big = image_msg(pattern_image(480, 640))
    for _ in range(20):
        big.header.stamp = make_stamp()
        publisher.publish(big)
        client.spin_for(0.02)
    code, seconds = node.interrupt(timeout=5.0)
    assert code == 0, node.log()
    assert seconds < 5.0


def test_watchdog_explains_a_qos_mismatch(processes):
    started, client = processes
    node = started['reliable']
    assert node.wait_for_log('ready', 90), node.log()
    # Nobody publishes yet.
    assert node.wait_for_log('no publisher exists on this topic', 10), node.log()
    client.subscribe(Image, '/strict/depth/image', RELIABLE)
    publisher = client.publisher(Image, '/strict/image', reliable=False)
    assert client.wait_for_publishers('/strict/depth/image')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 'publish best_effort' not in node.log():
        publisher.publish(image_msg(pattern_image(48, 64), stamp=make_stamp()))
        client.spin_for(0.2)
    log = node.log()
    assert 'publish best_effort, which a reliable subscription never receives' in log, log
    assert 'set qos_overrides./strict/image.subscription.reliability to best_effort' in log
    assert not client.received['/strict/depth/image']
    code, seconds = node.interrupt(timeout=5.0)
    assert code == 0, node.log()


def compressed_msg(rgb, stamp, extension='.jpg'):
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage()
    msg.header.stamp = stamp
    msg.header.frame_id = 'jpeg_cam'
    msg.format = 'jpeg' if extension == '.jpg' else 'png'
    msg.data = data.tobytes()
    return msg


def test_compressed_transport(processes):
    started, client = processes
    node = started['compressed']
    client.subscribe(Image, '/jpeg/edges', RELIABLE)
    publisher = client.publisher(CompressedImage, '/jpeg/image/compressed', reliable=True)
    assert node.wait_for_log('ready', 90), node.log()
    assert client.wait_for_subscribers('/jpeg/image/compressed'), node.log()
    assert client.wait_for_publishers('/jpeg/edges')
    rgb = pattern_image(50, 70)
    answered = None
    deadline = time.monotonic() + 20
    while answered is None and time.monotonic() < deadline:
        stamp = make_stamp()
        publisher.publish(compressed_msg(rgb, stamp))
        if client.wait_for_stamp(['/jpeg/edges'], stamp, 1.0):
            answered = stamp
    assert answered is not None, node.log()
    msg = client.messages_with_stamp('/jpeg/edges', answered)[0]
    assert (msg.width, msg.height, msg.header.frame_id) == (70, 50, 'jpeg_cam')
    # A corrupt frame is rejected; the next PNG is served.
    corrupt = CompressedImage()
    corrupt.header.stamp = bad = make_stamp()
    corrupt.format = 'jpeg'
    corrupt.data = b'\xff\xd8\xff\xe0 truncated garbage'
    publisher.publish(corrupt)
    client.spin_for(0.3)
    good = make_stamp()
    publisher.publish(compressed_msg(rgb, good, '.png'))
    assert client.wait_for_stamp(['/jpeg/edges'], good, 20), node.log()
    assert not client.messages_with_stamp('/jpeg/edges', bad)
    assert node.wait_for_log('could not be decoded', 5), node.log()
    edges = np.frombuffer(bytes(client.messages_with_stamp('/jpeg/edges', good)[0].data),
                          '<f4')
    assert edges.size == 70 * 50
