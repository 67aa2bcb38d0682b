"""Frames lost before the image callback: gaps in the publisher's sequence numbers.

A burst faster than the executor overflows the subscription's history (``input.qos_depth``):
DDS replaces the oldest samples before the callback ever sees them, and nothing in the
message says so (``message_lost`` events report transport losses, not history overflow).
Each message's info carries the publication sequence number of its writer; a jump of more
than one is that many frames lost. The count starts at the first frame a subscription
receives (frames before it are not known) and pauses while the topic has more than one
publisher (the info does not say which writer a number belongs to).

Nothing here needs rclpy.
"""

import threading

# rmw's "sequence numbers unsupported" value (RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED).
UNSUPPORTED = 2 ** 64 - 1


class SequenceGaps:
    """Counts the publication sequence numbers skipped between received messages."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = None
        self.single_publisher = True    # set from the ROS graph (the node's watchdog timer)

    def seen(self, sequence_number):
        """Record a received message's number; how many were lost just before it."""
        if sequence_number is None or sequence_number in (0, UNSUPPORTED):
            return 0
        with self._lock:
            last, self._last = self._last, int(sequence_number)
            if last is None or not self.single_publisher or sequence_number <= last:
                return 0                # first frame, several writers, or a new writer
            return int(sequence_number) - last - 1

    def publishers_changed(self, count):
        """Take the topic's publisher count: with several, counting pauses."""
        with self._lock:
            single = count <= 1
            if single and not self.single_publisher:
                self._last = None       # restart from the next frame of the one writer
            self.single_publisher = single
