"""The demo camera (folder, video and synthetic sources) and ``mtdp-demo`` end to end."""

import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from mtdp_ros.ros.image_input import image_msg_to_rgb

from ros_harness import REPO, RosClient, TINY_MLORE, domain_id, ros_env, write_config

# Slow (demo camera and node processes over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture(scope='module')
def domain():
    return domain_id(__name__)


def start_camera(domain, log_path, namespace, **params):
    command = [sys.executable, '-m', 'mtdp_ros.demo_camera', '--ros-args',
               '-r', f'__ns:={namespace}']
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    log = open(log_path, 'w', encoding='utf-8')
    return subprocess.Popen(command, env=ros_env(domain), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)


def receive(client, process, topic, count, timeout=30.0):
    client.spin_until(lambda: len(client.received[topic]) >= count or
                      process.poll() is not None, timeout)
    client.spin_for(0.3)
    return client.received[topic]


def test_folder_source_publishes_the_images_in_order_with_camera_info(tmp_path, domain):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for index, colour in enumerate(COLOURS):
        image = np.zeros((60, 80, 3), np.uint8)
        image[:] = colour
        image[10:20, 10 + index * 10:20 + index * 10] = 255   # a marker per frame
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f'frame_{index:02d}.png'), bgr)
    (folder / 'notes.txt').write_text('not an image')
    client = RosClient(domain, name='folder_test')
    client.subscribe(Image, '/folder/image', RELIABLE)
    client.subscribe(CameraInfo, '/folder/camera_info', RELIABLE)
    # The camera holds its first frame until our subscription is matched (an event), and
    # its reliable publisher waits for our acknowledgements before it exits, so every one
    # of its 30 frames arrives, in the folder's order from the first image on.
    camera = start_camera(domain, tmp_path / 'camera.log', '/folder', source=str(folder),
                          width=0, height=0, rate=10.0, max_frames=30, loop=True,
                          qos='reliable', frame_id='folder_cam', horizontal_fov_deg=90.0,
                          wait_for_subscribers=1)
    try:
        assert client.wait_for_publishers('/folder/image')
        frames = receive(client, camera, '/folder/image', 30)
        assert camera.wait(20) == 0, (tmp_path / 'camera.log').read_text()
    finally:
        client.close()
        if camera.poll() is None:
            camera.kill()
    assert len(frames) == 30, (tmp_path / 'camera.log').read_text()
    shown = []
    for msg in frames:
        rgb = image_msg_to_rgb(msg)
        assert rgb.shape == (60, 80, 3)
        index = COLOURS.index(tuple(int(v) for v in rgb[50, 50]))
        assert tuple(int(v) for v in rgb[15, 15 + index * 10]) == (255, 255, 255)
        assert msg.header.frame_id == 'folder_cam'
        shown.append(index)
    assert shown == [k % len(COLOURS) for k in range(30)]
    info = client.received['/folder/camera_info'][-1]
    # 90 degrees across 80 pixels: fx = 40 / tan(45 deg) = 40.
    assert (info.width, info.height) == (80, 60)
    np.testing.assert_allclose([info.k[0], info.k[2], info.k[4], info.k[5]],
                               [40.0, 39.5, 40.0, 29.5])


def test_publishing_is_logged_with_the_first_frame_not_before(tmp_path, domain):
    # demo.launch.py logged "publishing at 10 Hz" while the first scene was still being
    # rendered; the rate is now logged when the first frame goes out.
    log_path = tmp_path / 'camera.log'
    camera = start_camera(domain, log_path, '/first', source='pattern', width=64,
                          height=48, rate=10.0, qos='reliable', wait_for_subscribers=1)
    client = RosClient(domain, name='first_frame_test')
    try:
        assert client.spin_until(lambda: 'source ready' in log_path.read_text(), 60), \
            log_path.read_text()
        # No subscriber yet: the camera holds its first frame, and says it is not publishing.
        assert 'publishing' not in log_path.read_text()
        client.subscribe(Image, '/first/image', RELIABLE)
        frames = receive(client, camera, '/first/image', 1)
        assert frames, log_path.read_text()
        assert client.spin_until(
            lambda: 'publishing pattern frames on /first/image at 10 Hz (first frame 64x48)'
            in log_path.read_text(), 10), log_path.read_text()
    finally:
        client.close()
        camera.kill()
        camera.wait(10)


def test_video_source_ends_when_not_looping(tmp_path, domain):
    path = str(tmp_path / 'clip.avi')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (64, 48))
    if not writer.isOpened():
        pytest.skip('this OpenCV build cannot write MJPG video')
    for colour in COLOURS:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:] = colour[::-1]
        writer.write(frame)
    writer.release()
    client = RosClient(domain, name='video_test')
    client.subscribe(Image, '/video/image', RELIABLE)
    # The camera holds its first frame until our subscription is matched (an event, not a
    # delay), and its reliable publisher waits for our acknowledgements before it exits:
    # every frame of the clip must arrive, however slow discovery is.
    camera = start_camera(domain, tmp_path / 'camera.log', '/video', source=path, width=0,
                          height=0, rate=5.0, loop='false', qos='reliable',
                          wait_for_subscribers=1)
    try:
        assert client.wait_for_publishers('/video/image')
        frames = receive(client, camera, '/video/image', 3)
        assert camera.wait(20) == 0, (tmp_path / 'camera.log').read_text()
    finally:
        client.close()
        if camera.poll() is None:
            camera.kill()
    assert 'source exhausted' in (tmp_path / 'camera.log').read_text()
    assert len(frames) == 3, (tmp_path / 'camera.log').read_text()
    last = image_msg_to_rgb(frames[-1]).astype(int)
    assert last.shape == (48, 64, 3)
    assert np.abs(last.mean(axis=(0, 1)) - COLOURS[2]).max() < 12   # MJPG is lossy


def test_synthetic_source_serves_rendered_scenes():
    pytest.importorskip('mtdp_ros.training.synthetic')
    from mtdp_ros.demo_camera import NOT_READY, SyntheticSource
    from mtdp_ros.training.raycast import intrinsics_for

    class Log:
        def warning(self, text):
            raise AssertionError(text)

    source = SyntheticSource(64, 48, 60.0, scenes=1, seed=3, hold_frames=2, logger=Log())
    first = source.next()          # nothing is published before the first scene exists
    assert first is NOT_READY or first[0].shape == (48, 64, 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not source._scenes:
        time.sleep(0.1)
    assert source._scenes, 'no scene rendered within 60 s'
    image, intrinsics = source.next()
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert image.std() > 1.0                                    # a scene, not a blank
    np.testing.assert_allclose(intrinsics, intrinsics_for(48, 64))
    assert source.next()[0] is image                            # held for two frames


def run_demo(tmp_path, domain, *extra):
    command = [sys.executable, '-m', 'mtdp_ros.demo', '--domain-id', str(domain),
               '--output', str(tmp_path / 'out'), *extra]
    return subprocess.run(command, env=ros_env(domain), cwd=REPO, capture_output=True,
                          text=True, timeout=150)


def test_points_view_draws_only_points_with_finite_coordinates():
    from std_msgs.msg import Header

    from mtdp_ros.demo import points_view
    from mtdp_ros.ros.pointcloud import pack_rgb, points_to_msg
    magenta = pack_rgb(np.array([[[255, 0, 255]]], np.uint8))[0, 0]
    points = np.array([[[0.0, 0.0, 1.0, magenta], [0.0, 0.0, 2.0, magenta],
                        [np.nan, 0.0, 1.0, magenta], [np.inf, 0.0, 1.0, magenta],
                        [0.5, 0.0, np.nan, magenta]]], np.float32)
    view = points_view(points_to_msg(points, Header()))
    drawn = np.argwhere((view == [255, 0, 255]).all(axis=-1))
    # The two valid points, on the centre column (x = 0); nothing at the left edge, where
    # the integer value of a NaN x used to be clipped to.
    assert len(drawn) == 2 and (drawn[:, 1] == view.shape[1] // 2).all()


def test_mtdp_demo_writes_a_mosaic_per_output_and_prints_rate_and_latency(tmp_path, domain):
    config = write_config(tmp_path, TINY_MLORE)
    result = run_demo(tmp_path, domain, '--model', config, '--source', 'pattern',
                      '--duration', '3', '--rate', '5', '--width', '160', '--height', '120',
                      '--device', 'cpu')
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / 'out'
    for name in ('semantic.png', 'depth.png', 'normals.png', 'edges.png', 'overview.png',
                 'points.png'):
        picture = cv2.imread(str(out / name))
        assert picture is not None, name
        assert picture.shape[1] >= 320, name
    assert 'Hz; latency camera stamp -> demo subscriber p50' in result.stdout
    assert 'node diagnostics: input_rate_hz=' in result.stdout
    assert 'random weights' in result.stdout
    assert 'node exit code 0, camera exit code 0' in result.stdout


def test_mtdp_demo_reports_a_node_that_cannot_start(tmp_path, domain):
    result = run_demo(tmp_path, domain, '--model', 'no_such_model', '--source',
                      'pattern', '--duration', '2')
    assert result.returncode == 1
    assert "unknown model 'no_such_model'" in result.stderr
