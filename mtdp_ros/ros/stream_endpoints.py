"""The ROS side of a camera stream: its subscriptions and its output publishers.

:class:`~mtdp_ros.ros.stream.CameraStream` needs no rclpy; the node connects each stream
to ROS here: the camera_info subscription (every lifecycle state), the image
subscription (while active) and a :class:`PublisherSink` of the outputs the model has
(while configured). Topic names come from ``stream.topic``, so a named stream's topics
live under ``<name>/``.
"""

from rclpy.event_handler import PublisherEventCallbacks
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from mtdp_ros.ros.camera import FocalCorrection
from mtdp_ros.ros.diagnostics import InputWatchdog
from mtdp_ros.ros.input_loss import SequenceGaps
from mtdp_ros.ros.outputs import output_topics
from mtdp_ros.ros.qos import (INPUT_DEFAULTS, declare_overrides, overriding_options,
                              qos_profile)
from mtdp_ros.ros.stream import CameraStream, Sink


# The output publishers carry no QoS event handlers. rclpy gives every publisher two by
# default (incompatible QoS, incompatible type), and the executor walks every handler
# in Python at each spin, i.e. at every frame that arrives: with ten outputs per camera,
# six cameras at 10 Hz cost the executor's thread 0.17 cores against 0.08 without, and
# the engine, waiting for the GIL, served 12.44 against 14.95 frames/s (medians of three
# alternating runs, bench_cameras.py --cameras 6 --modes one --thread-cpu). A subscriber
# with incompatible QoS still says so on its side (rclcpp's and rclpy's default handlers,
# RViz); the node's own subscriptions keep theirs.
OUTPUT_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)


class QoSOverrideError(ValueError):
    """A qos_overrides.* parameter has a value that cannot be used (the reason)."""


class PublisherSink(Sink):
    """A stream's output publishers: a message is built only when somebody subscribes.

    ``gate``: the node's :class:`~mtdp_ros.ros.output_gate.OutputGate`; a message goes out
    only while it lets the frame in flight publish (nothing after a transition).
    """

    def __init__(self, node, stream, model_tasks, qos, gate=None):
        self._gate = gate
        # Only the outputs this model has are advertised (no points without depth). ``qos``
        # is the default; each topic's qos_overrides.<topic>.publisher.* apply.
        checked = []
        for topic, msg_type in output_topics(model_tasks):
            name = node.resolve_topic_name(stream.topic(topic))
            _, problem = declare_overrides(node, name, 'publisher', qos)
            if problem:
                raise QoSOverrideError(problem)
            checked.append((topic, msg_type))
        self.publishers = {
            topic: node.create_publisher(msg_type, stream.topic(topic), qos,
                                         qos_overriding_options=overriding_options(),
                                         event_callbacks=OUTPUT_EVENTS)
            for topic, msg_type in checked}

    def wanted(self, topic):
        """Whether ``topic`` has a subscriber (and the frame may still publish)."""
        if self._gate is not None and not self._gate.frame_allowed():
            return False
        return self.publishers[topic].get_subscription_count() > 0

    def publish(self, topic, msg):
        """Publish ``msg`` on ``topic``, unless the gate has closed meanwhile."""
        if self._gate is None:
            self.publishers[topic].publish(msg)
            return
        with self._gate.publishing() as allowed:
            if allowed:
                self.publishers[topic].publish(msg)

    def destroy(self, node):
        """Destroy the publishers (cleanup)."""
        for publisher in self.publishers.values():
            node.destroy_publisher(publisher)
        self.publishers = {}


def camera_stream(node, name):
    """A CameraStream of ``node`` named ``name`` ('' for today's topics), camera_info wired.

    Its focal correction comes from the read-only parameters depth.focal_correction and
    camera.rectified; its camera_info is listened to in every lifecycle state (cheap), so
    that configure knows the camera's size. With an invalid input.qos or QoS override,
    configure fails and says why; there is nothing to listen to.
    """
    log = node.get_logger()
    stream = CameraStream(name, log=log, now_ns=lambda: node.get_clock().now().nanoseconds)
    stream.info_topic = node.resolve_topic_name(stream.topic('camera_info'))
    stream.watchdog = InputWatchdog()
    stream.input_qos = None       # the image subscription's QoS, from configure on
    stream.focal = FocalCorrection(node.get_parameter('depth.focal_correction').value,
                                   bool(node.get_parameter('camera.rectified').value),
                                   stream.info_topic, log.info)
    try:
        qos = input_qos(node, stream.info_topic, input_default(node))
    except ValueError:
        return stream
    subscribe_camera_info(node, stream, qos)
    return stream


def input_default(node):
    """The inputs' default QoS (the deprecated input.qos / input.qos_depth give it)."""
    return qos_profile(*(node.get_parameter(name).value for name in INPUT_DEFAULTS))


def input_qos(node, topic, default):
    """The QoS of the subscription on ``topic`` (fully qualified): ``default`` overridden.

    Raises QoSOverrideError naming the qos_overrides parameter that cannot be used.
    """
    profile, problem = declare_overrides(node, topic, 'subscription', default)
    if problem:
        raise QoSOverrideError(problem)
    return profile


def configure_inputs(node, streams, values):
    """Transport, resolved image topic and QoS (``qos_overrides.*`` over the defaults).

    Checked at configure before the model loads: a bad override fails configure (StartupError
    naming it).
    """
    from mtdp_ros.ros.engine_setup import StartupError
    default = qos_profile(values['input.qos'], values['input.qos_depth'])
    try:
        for stream in streams:
            stream.compressed = values['input.transport'] == 'compressed'
            stream.input_topic = node.resolve_topic_name(stream.image_topic)
            stream.input_qos = input_qos(node, stream.input_topic, default)
            input_qos(node, stream.info_topic, default)
    except QoSOverrideError as exc:
        raise StartupError(f'invalid QoS override: {exc}') from None


def configure_outputs(node, streams, values, tasks, gate):
    """Each stream's publishers (output QoS as for the inputs), behind the output ``gate``."""
    from mtdp_ros.ros.engine_setup import StartupError
    default = qos_profile(values['output.qos'], values['output.qos_depth'])
    try:
        for stream in streams:
            stream.sink = PublisherSink(node, stream, tasks, default, gate=gate)
    except QoSOverrideError as exc:
        raise StartupError(f'invalid QoS override: {exc}') from None


def subscribe_camera_info(node, stream, qos):
    """Feed ``stream``'s camera_info topic to ``stream.on_camera_info``."""
    return node.create_subscription(CameraInfo, stream.topic('camera_info'),
                                    stream.on_camera_info, qos,
                                    qos_overriding_options=overriding_options())


class SerializedImage:
    """An image message as it came off the wire (CDR bytes), deserialized when used.

    Frames often arrive faster than the engine takes them (several cameras): most wait in
    a camera's slot until a newer one replaces them. Deserializing only the frame that is
    taken keeps that work (0.6 ms per 640 x 480 frame, with the GIL held) off every
    dropped frame, and a waiting frame is its wire bytes, not a message object: a node
    with six 640 x 480 cameras at 10 Hz held about 95 MiB less (README, "Several
    cameras").
    """

    __slots__ = ('data', 'msg_type')

    def __init__(self, data, msg_type):
        self.data = data
        self.msg_type = msg_type

    def deserialize(self):
        """The message (sensor_msgs/Image or CompressedImage)."""
        return deserialize_message(self.data, self.msg_type)


def subscribe_images(node, stream, qos):
    """Feed ``stream``'s image topic to ``stream.on_image``, stamped on arrival.

    The subscription takes the serialized message (``raw``): ``stream.prepare``
    deserializes the frames it uses (:class:`SerializedImage`). Frames lost before the
    callback (gaps in the writer's sequence numbers, see :mod:`~mtdp_ros.ros.input_loss`)
    are counted as ``lost_before_callback``; ``stream.sequence_gaps`` is this
    subscription's counter (new with each subscription). ``qos``: the default;
    qos_overrides.<topic>.subscription.* apply (declared at configure by
    :func:`input_qos`).
    """
    clock = node.get_clock()
    msg_type = CompressedImage if stream.compressed else Image
    gaps = stream.sequence_gaps = SequenceGaps()

    def on_message(data, info):
        lost = gaps.seen(info.get('publication_sequence_number'))
        if lost:
            stream.statistics.counters.add('lost_before_callback', lost)
        stream.on_image(SerializedImage(data, msg_type), clock.now().nanoseconds)
    return node.create_subscription(msg_type, stream.image_topic, on_message, qos,
                                    qos_overriding_options=overriding_options(), raw=True)
