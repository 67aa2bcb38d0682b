"""ROS 2 helpers of the perception node: message conversion, colour maps, point clouds.

Together with :mod:`mtdp_ros.perception_node` and the demo tools, this is the only code of
the project that imports ``rclpy`` or ROS message packages. The colour maps
(:mod:`.colormaps`) are plain NumPy/OpenCV so that other tools can reuse them.
"""
