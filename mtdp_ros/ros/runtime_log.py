"""The bridge from the runtime's Python log records and warnings to the node's ROS logger.

The runtime (below the node) reports fallbacks (CPU instead of CUDA, random weights...)
through the ``mtdp_ros.runtime`` Python logger and as Python warnings; while the node
creates its engine, both reach the ROS log, each message once.
"""

import logging
import warnings
from contextlib import contextmanager

RUNTIME_LOGGER = 'mtdp_ros.runtime'
# Messages remembered to say each one once (bounded: a runtime that logs per frame must not
# grow the node's memory).
REMEMBERED_MESSAGES = 100


class RosLogHandler(logging.Handler):
    """Forwards Python log records to a ROS logger (``error``, ``warning`` or ``info``)."""

    def __init__(self, logger):
        super().__init__(logging.INFO)
        self._logger = logger
        self.messages = []

    def emit(self, record):
        """Log ``record`` on the ROS logger at the matching level."""
        message = record.getMessage()
        if len(self.messages) < REMEMBERED_MESSAGES:
            self.messages.append(message)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        else:
            self._logger.info(message)


class RuntimeLogBridge:
    """Attaches a :class:`RosLogHandler` to the runtime's logger until :meth:`detach`."""

    def __init__(self, ros_logger):
        self._ros_logger = ros_logger
        self.handler = RosLogHandler(ros_logger)
        self._attached = False

    def attach(self):
        """Route the runtime's records to the ROS logger (idempotent)."""
        if self._attached:
            return
        runtime_logger = logging.getLogger(RUNTIME_LOGGER)
        # Restored by detach: an embedding process (a test, a composed program) keeps its
        # own logging configuration once the node is gone.
        self._saved = (runtime_logger.propagate, runtime_logger.level)
        runtime_logger.addHandler(self.handler)
        runtime_logger.propagate = False
        runtime_logger.setLevel(logging.INFO)
        self._attached = True

    def detach(self):
        """Stop routing (idempotent)."""
        if self._attached:
            runtime_logger = logging.getLogger(RUNTIME_LOGGER)
            runtime_logger.removeHandler(self.handler)
            runtime_logger.propagate, level = self._saved
            runtime_logger.setLevel(level)
            self._attached = False

    @contextmanager
    def forwarding_warnings(self):
        """Within the block, Python warnings are logged as ROS warnings once each.

        A warning whose text the runtime logger already said is not repeated. Yields the
        set of texts said so far (log records and warnings); it is complete on exit.
        """
        said = set()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                yield said
            finally:
                said.update(self.handler.messages)
                for warning in caught:
                    text = str(warning.message)
                    if text not in said:
                        said.add(text)
                        self._ros_logger.warning(text)
