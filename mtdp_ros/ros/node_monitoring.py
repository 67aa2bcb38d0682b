"""The node's monitoring over all its cameras: /diagnostics statuses and the input watchdog."""

from diagnostic_msgs.msg import DiagnosticArray

from mtdp_ros.ros.diagnostics import build_engine_status, build_status
from mtdp_ros.ros.qos import describe_qos


def diagnostic_array(node):
    """One DiagnosticStatus per camera stream of ``node`` (and the engine's, with several).

    Status names carry the node's namespace: two nodes named alike in two namespaces must
    not collide (``<ns>/<node>: perception [<camera>]``, ``<ns>/<node>: engine``).
    """
    node_name = node.get_fully_qualified_name().lstrip('/')
    statuses = []
    for stream in node.streams:
        name = f'{node_name}: perception'
        if stream.name:
            name += f' {stream.name}'
        statuses.append(build_status(
            name, node.state, stream.statistics, engine=node.engine,
            settings=node.settings, input_topic=stream.input_topic,
            input_qos=describe_qos(stream.input_qos) if stream.input_qos else '',
            startup_to_first_output_s=node.startup_to_first_output_s,
            camera_info_problem=stream.camera_info_problem,
            engine_state=stream.engine_state))
    if node.camera_names:
        statuses.append(build_engine_status(
            f'{node_name}: engine', node.state, node.engine, node.batch_statistics,
            node.camera_names, node.max_batch))
    array = DiagnosticArray()
    array.header.stamp = node.get_clock().now().to_msg()
    array.status = statuses
    return array


def watch_streams(node, timeout):
    """Warn when a stream of ``node`` gets no frame; count losses only with one publisher."""
    for stream in node.streams:
        if stream.sequence_gaps is not None:
            stream.sequence_gaps.publishers_changed(node.count_publishers(stream.input_topic))
        text = stream.watchdog.check(node, stream.statistics, timeout, stream.input_topic,
                                     stream.input_qos)
        if text is not None:
            node.get_logger().warning(text)
