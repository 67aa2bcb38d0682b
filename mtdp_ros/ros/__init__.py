"""ROS 2 side of the project: camera streams, image messages, colour maps, point clouds.

Together with :mod:`mtdp_ros.perception_node` and the demo tools, this is the only code of
the project that imports ``rclpy`` or ROS message packages. Some modules need no rclpy, so
that other layers reuse them: the camera-image decoder (:mod:`.image_input`, no ROS
import at all, also read by training's bag reader), the camera stream (:mod:`.stream`,
also run by ``mtdp bag``), the batching of several cameras (:mod:`.batching`, also
run by ``mtdp bag``), the statistics (:mod:`.monitoring`) and the colour maps
(:mod:`.colormaps`).
"""
