"""Training and evaluation: synthetic scenes, datasets, losses, metrics, train/eval loops.

May import ``mtdp_ros.models`` and ``mtdp_ros.runtime``; never ROS.
"""
