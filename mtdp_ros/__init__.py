"""mtdp_ros: multi-task dense prediction (MLoRE, TaskDiffusion) for ROS 2."""

__version__ = '0.1.0'
