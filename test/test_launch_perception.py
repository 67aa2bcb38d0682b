"""launch_testing test of launch/perception.launch.py (ROS 2 installations only).

Runs the launch file with a tiny model config, publishes a camera frame on the remapped
image topic and checks that depth and semantic labels come back with the frame's header;
after shutdown every process must have exited cleanly. Skipped where launch_testing is not
installed (it is not on PyPI); run it with ``launch_test`` or pytest with the
launch_testing plugin after ``colcon build``.
"""

import os
import subprocess
import sys
import unittest

import pytest

try:
    import launch_ros.actions  # noqa: F401
    import launch_testing
    import launch_testing.asserts
except ImportError as missing:
    pytest.skip(f'launch_testing / launch_ros (ROS 2 installations only, not on PyPI) are '
                f'not installed: {missing}', allow_module_level=True)

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_output import rgb_to_image_msg

# ``launch_test`` loads this file without pytest's conftest: put the harness beside it on
# the path itself.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_harness import LaunchClientTest, perception_launch  # noqa: E402,I100
from ros_harness import REPO, domain_id  # noqa: E402,I100

# Slow (a launch file starting node processes): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# Its own ROS domain, host-local discovery: parallel runs do not see each other.
DOMAIN = domain_id(__name__)


@pytest.mark.launch_test
def generate_test_description():
    """The perception launch file with a tiny model, remapped into /launch_test."""
    return perception_launch(DOMAIN, 'mtdp_launch_test_',
                             image_topic='/launch_test/camera/image_raw',
                             camera_info_topic='/launch_test/camera/camera_info',
                             namespace='launch_test', tasks='semseg,depth')


class TestPerceptionLaunch(LaunchClientTest):
    """While the launch runs: a frame in, outputs out."""

    DOMAIN = DOMAIN

    def test_outputs_carry_the_input_header(self):
        received = {'depth/image': [], 'semantic/labels': []}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for topic, store in received.items():
            self.node.create_subscription(Image, f'/launch_test/{topic}', store.append, qos)
        publisher = self.node.create_publisher(Image, '/launch_test/camera/image_raw', qos)
        frame = rgb_to_image_msg(np.full((48, 64, 3), 90, np.uint8))
        frame.header.frame_id = 'launch_test_frame'

        def send():
            frame.header.stamp = self.node.get_clock().now().to_msg()
            publisher.publish(frame)

        self.send_until(send, lambda: all(received.values()))
        for topic, store in received.items():
            self.assertTrue(store, f'nothing arrived on /launch_test/{topic}')
            self.assertEqual(store[-1].header.frame_id, 'launch_test_frame')
            self.assertEqual((store[-1].width, store[-1].height), (64, 48))


# What `ros2 launch mtdp_ros perception.launch.py tasks:=foo` runs (ros2launch's
# launch_a_launch_file: a LaunchService, its return code is the exit code).
FAILING_LAUNCH = """
import sys
import launch
from launch.launch_description_sources import PythonLaunchDescriptionSource
service = launch.LaunchService(argv=sys.argv[2:])
service.include_launch_description(launch.LaunchDescription([
    launch.actions.IncludeLaunchDescription(PythonLaunchDescriptionSource(sys.argv[1]),
                                            launch_arguments=[a.split(':=', 1)
                                                              for a in sys.argv[2:]])]))
sys.exit(service.run())
"""


class TestFailingNodeFailsTheLaunch(unittest.TestCase):
    """A node that exits non-zero at start-up makes the launch exit non-zero, saying why."""

    def test_unknown_task(self):
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id(__name__ + '.failing')),
                   ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
        done = subprocess.run(
            [sys.executable, '-c', FAILING_LAUNCH,
             os.path.join(REPO, 'launch', 'perception.launch.py'),
             'tasks:=foo', 'namespace:=launch_test_failing', 'device:=cpu',
             'use_rviz:=false'],
            env=env, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertIn("unknown tasks ['foo']", output)
        self.assertIn('exited with code 1', output)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """After the launch: clean exits."""

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
