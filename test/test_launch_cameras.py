"""launch_testing test of launch/perception.launch.py with ``cameras`` (ROS installs only).

Runs the launch file with a tiny model config and two cameras, publishes a frame of a
different size on each camera's image topic and checks that each camera's depth and
semantic labels come back under its name with its frame's header and size; after
shutdown every process must have exited cleanly. Skipped where launch_testing is not
installed (it is not on PyPI); run it with ``launch_test`` or pytest with the
launch_testing plugin after ``colcon build``.
"""

import os
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
from ros_harness import domain_id  # noqa: E402,I100

# Slow (a launch file starting node processes): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# Its own ROS domain, host-local discovery: parallel runs do not see each other.
DOMAIN = domain_id(__name__)


@pytest.mark.launch_test
def generate_test_description():
    """The perception launch file with a tiny model and two cameras in /launch_cams."""
    return perception_launch(DOMAIN, 'mtdp_launch_cams_', cameras='[front,left]',
                             namespace='launch_cams', tasks='semseg,depth')


# (width, height) of each camera's frames.
CAMERAS = {'front': (64, 48), 'left': (90, 120)}


class TestCamerasLaunch(LaunchClientTest):
    """While the launch runs: a frame in per camera, that camera's outputs out."""

    DOMAIN = DOMAIN

    def test_each_camera_gets_its_outputs(self):
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received = {}
        publishers = {}
        for camera in CAMERAS:
            publishers[camera] = self.node.create_publisher(
                Image, f'/launch_cams/{camera}/image', qos)
            for topic in ('depth/image', 'semantic/labels'):
                store = received[(camera, topic)] = []
                self.node.create_subscription(Image, f'/launch_cams/{camera}/{topic}',
                                              store.append, qos)

        def send():
            for camera, (width, height) in CAMERAS.items():
                frame = rgb_to_image_msg(np.full((height, width, 3), 90, np.uint8))
                frame.header.frame_id = f'{camera}_frame'
                frame.header.stamp = self.node.get_clock().now().to_msg()
                publishers[camera].publish(frame)

        self.send_until(send, lambda: all(received.values()))
        for (camera, topic), store in received.items():
            self.assertTrue(store, f'nothing arrived on /launch_cams/{camera}/{topic}')
            self.assertEqual(store[-1].header.frame_id, f'{camera}_frame')
            self.assertEqual((store[-1].width, store[-1].height), CAMERAS[camera])


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """After the launch: clean exits."""

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
