"""What the launch_testing tests of launch/perception.launch.py share (ROS installs only).

Imported after the test module has checked that launch_testing and launch_ros exist.
"""

import json
import os
import tempfile
import time
import unittest

import launch
import launch.actions
import launch.launch_description_sources
import launch_testing.actions
import rclpy
from rclpy.executors import SingleThreadedExecutor

from ros_harness import REPO, TINY_MLORE


def perception_launch(domain, prefix, **arguments):
    """The perception launch file with the tiny model config in ``domain`` (host-local).

    ``arguments``: the launch arguments besides ``preset``, ``device`` (cpu) and
    ``use_rviz`` (false).
    """
    config = os.path.join(tempfile.mkdtemp(prefix=prefix), 'tiny.json')
    with open(config, 'w', encoding='utf-8') as handle:
        json.dump(TINY_MLORE, handle)
    perception = launch.actions.IncludeLaunchDescription(
        launch.launch_description_sources.PythonLaunchDescriptionSource(
            os.path.join(REPO, 'launch', 'perception.launch.py')),
        launch_arguments={'preset': config, 'device': 'cpu', 'use_rviz': 'false',
                          **arguments}.items())
    return launch.LaunchDescription([
        launch.actions.SetEnvironmentVariable('ROS_DOMAIN_ID', str(domain)),
        launch.actions.SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST'),
        perception, launch_testing.actions.ReadyToTest()])


class LaunchClientTest(unittest.TestCase):
    """A test case with its own rclpy context, node and executor in ``DOMAIN``."""

    DOMAIN = None
    NODE_NAME = 'launch_test_client'

    @classmethod
    def setUpClass(cls):
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context, domain_id=cls.DOMAIN)
        cls.node = rclpy.create_node(cls.NODE_NAME, context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown(timeout_sec=1.0)
        cls.node.destroy_node()
        rclpy.try_shutdown(context=cls.context)

    def send_until(self, send, done, timeout=60.0):
        """Call ``send()`` once a second until ``done()`` (spinning meanwhile) or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            send()
            end = time.monotonic() + 1.0
            while time.monotonic() < end and not done():
                self.executor.spin_once(timeout_sec=0.1)
