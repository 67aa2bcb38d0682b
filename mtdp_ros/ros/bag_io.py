"""Reading and writing rosbag2 bags (sqlite3 or mcap) for ``mtdp bag``, without ROS installed.

The ``rosbags`` library (pure Python) reads and writes the bag files and their metadata;
the messages themselves go through rclpy's own CDR (de)serialization into the sensor_msgs
classes the node uses, so that the offline path converts and builds messages exactly as
the node does. Output connections carry the message definition and RIHS01 type hash of
ROS 2 Jazzy (rosbags' typestore), which ``ros2 bag`` and rosbags readers require.

An output bag is written into a hidden folder beside its destination and renamed into
place by :meth:`BagWriter.commit`; on any failure :meth:`BagWriter.abort` removes it, so
no partial bag is ever left at the destination.

What a bag may cost to read (decompressed chunk and message sizes) and whether its
connections' message definitions are those of the types read is checked by
:mod:`mtdp_ros.ros.bag_guard`.
"""

import os
import re
import shutil
import tempfile

from mtdp_ros.ros import bag_guard
from mtdp_ros.ros.bag_guard import ReadLimits
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, Writer, WriterError
from rosbags.rosbag2.enums import StoragePlugin
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

IMAGE_TYPES = {'sensor_msgs/msg/Image': Image,
               'sensor_msgs/msg/CompressedImage': CompressedImage}
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
# rclpy message class -> rosbag2 type name of its output connection.
TYPE_NAMES = {Image: 'sensor_msgs/msg/Image', CompressedImage: 'sensor_msgs/msg/CompressedImage',
              CameraInfo: CAMERA_INFO_TYPE, PointCloud2: 'sensor_msgs/msg/PointCloud2'}
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# A ROS 2 absolute namespace: '/'-separated tokens of letters, digits and '_', none
# starting with a digit (rcl's rules for names).
NAMESPACE_PATTERN = re.compile(r'^(/[A-Za-z_][A-Za-z0-9_]*)+$')


class BagError(ValueError):
    """A bag that cannot be used as asked (the message names the bag, topic and problem)."""


def one_line(exc):
    """The text of an exception on one line (YAML and CDR errors span several)."""
    return ' '.join(str(exc).split()) or type(exc).__name__


def typestore():
    """Return the ROS 2 Jazzy typestore of rosbags (definitions and hashes), made once."""
    return bag_guard.jazzy()


def check_namespace(namespace):
    """The namespace without a trailing '/'; BagError unless it is an absolute ROS name."""
    cleaned = namespace.rstrip('/') if namespace != '/' else ''
    if cleaned and not NAMESPACE_PATTERN.match(cleaned):
        raise BagError(f'--namespace {namespace!r} is not an absolute ROS namespace '
                       f'(e.g. /mtdp_perception)')
    return cleaned


def check_output(path):
    """Raise BagError unless a bag can be created at ``path`` (absent, writable folder).

    Checked before any costly work (loading a model); :class:`BagWriter` checks again.
    """
    if os.path.lexists(path):
        raise BagError(f'output {path} exists already; remove it or choose another --out')
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BagError(f'folder of the output {path} does not exist: {parent}')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BagError(f'folder of the output {path} is not writable: {parent}')


def open_bag(path, limits=None):
    """An open rosbags Reader of the bag folder (or .mcap/.db3 file) at ``path``.

    ``limits``: the :class:`ReadLimits` of reading it (default ones if None). BagError for
    a missing path, anything rosbags cannot read, or an mcap chunk declared over the limit
    (the caller closes the reader).
    """
    bag_guard.set_limits(limits or ReadLimits())
    if not os.path.exists(path):
        raise BagError(f'input bag not found: {path}')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: B902 - a damaged file fails in many ways (fuzzed)
        raise BagError(f'cannot read bag {path}: {one_line(exc)}') from None
    # The mcap index states every chunk's size: refuse before reading (or loading a model).
    for storage in getattr(reader, 'storages', ()):
        for chunk in getattr(storage, 'chunks', ()):
            problem = bag_guard.chunk_size_problem(chunk.uncompressed_size)
            if problem:
                reader.close()
                raise BagError(f'cannot read bag {path}: {problem}')
    return reader


def read_messages(reader, connections):
    """(connection, bag time ns, raw CDR) of ``connections`` in time order.

    A record the reader fails on (a damaged file, a limit of :mod:`bag_guard`) or a
    message over the size limit raises BagError naming the bag.
    """
    records = reader.messages(connections=connections)
    limit = bag_guard.active_limits().max_message_bytes
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:  # noqa: B902 - as in open_bag
            raise BagError(f'cannot read bag {reader.path}: {one_line(exc)}') from None
        if len(record[2]) > limit:
            raise BagError(f'cannot read bag {reader.path}: a message of {record[0].topic} '
                           f'at {record[1]} ns has {len(record[2])} bytes, over the limit '
                           f'of {limit} (--max-message-mb)')
        yield record


def topic_connections(reader, topic, allowed_types, role):
    """The reader's connections of ``topic`` and their common type name.

    BagError when the topic is absent (listing the bag's topics), of another type, or
    its message definition is not that of its type (:func:`bag_guard.definition_problem`).
    """
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        available = ', '.join(f'{c.topic} ({c.msgtype})' for c in reader.connections)
        raise BagError(f'{role} {topic} is not in the bag; it has: {available or "no topics"}')
    types = {c.msgtype for c in connections}
    if len(types) != 1 or not types <= set(allowed_types):
        raise BagError(f'{role} {topic} has type {", ".join(sorted(types))}; expected '
                       f'{" or ".join(allowed_types)}')
    for connection in connections:
        problem = bag_guard.definition_problem(connection)
        if problem:
            raise BagError(f'{role} {topic}: {problem}')
    return connections, types.pop()


def deserialize(raw, msg_class, topic, timestamp):
    """An rclpy message of ``msg_class`` from CDR bytes; BagError naming a corrupt record."""
    try:
        return deserialize_message(bytes(raw), msg_class)
    except Exception as exc:  # noqa: B902 - rclpy raises several types for bad CDR
        raise BagError(f'{topic}: message at {timestamp} ns cannot be deserialized as '
                       f'{msg_class.__name__}: {one_line(exc)}') from None


class BagWriter:
    """A rosbag2 bag written beside ``path`` and renamed to it by :meth:`commit`.

    ``storage``: 'mcap' or 'sqlite3'. BagError when ``path`` exists (unless ``replace``:
    then the bag there is replaced when this one is complete) or cannot be created.
    Use as a context manager: leaving it with an exception aborts (removes the temporary
    bag); leaving it normally commits. :attr:`extra_files` (name -> text) are written into
    the bag folder before it is moved into place.
    """

    def __init__(self, path, storage='mcap', replace=False):
        if storage not in STORAGES:
            raise BagError(f'unknown storage {storage!r}; choose one of {", ".join(STORAGES)}')
        self.path = os.path.abspath(path)
        self.replace = replace
        self.extra_files = {}
        if os.path.lexists(self.path) and not replace:
            raise BagError(f'output {path} exists already; remove it or choose another --out')
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise BagError(f'folder of the output {path} does not exist: {parent}')
        try:
            self._staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(self.path)}.',
                                             suffix='.partial', dir=parent)
        except OSError as exc:
            raise BagError(f'cannot write beside {path}: {one_line(exc)}') from None
        # rosbags names the storage file after the bag folder: name the inner folder
        # as the destination so that the renamed bag's file names match its folder.
        self._bag_path = os.path.join(self._staging, os.path.basename(self.path))
        try:
            self._writer = Writer(self._bag_path, version=Writer.VERSION_LATEST,
                                  storage_plugin=STORAGES[storage])
            self._writer.open()
        except (WriterError, OSError) as exc:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise BagError(f'cannot write a bag beside {path}: {one_line(exc)}') from None
        except BaseException:   # an interrupt (signal) while opening: leave nothing
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        self._connections = {}
        self.counts = {}

    def add_topic(self, topic, msgtype, msgdef=None, rihs01=None):
        """Register ``topic`` of ``msgtype`` (definition from the Jazzy typestore if not given)."""
        if topic in self._connections:
            raise BagError(f'topic {topic} would be written twice into {self.path}')
        if msgdef is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
        else:
            connection = self._writer.add_connection(topic, msgtype, msgdef=msgdef,
                                                     rihs01=rihs01)
        self._connections[topic] = connection
        self.counts[topic] = 0

    def write_raw(self, topic, timestamp, raw):
        """Write already serialized bytes on a registered topic at ``timestamp`` (ns)."""
        try:
            self._writer.write(self._connections[topic], int(timestamp), raw)
        except (WriterError, OSError) as exc:
            raise BagError(f'cannot write {self.path}: {one_line(exc)}') from None
        self.counts[topic] += 1

    def write(self, topic, timestamp, msg):
        """Serialize an rclpy message and write it; registers the topic on first use."""
        if topic not in self._connections:
            self.add_topic(topic, TYPE_NAMES[type(msg)])
        self.write_raw(topic, timestamp, serialize_message(msg))

    def commit(self):
        """Close the bag and move it to its destination (BagError if that appeared since)."""
        try:
            try:
                self._writer.close()
            except (WriterError, OSError) as exc:
                raise BagError(f'cannot write {self.path}: {one_line(exc)}') from None
            for name, text in self.extra_files.items():
                with open(os.path.join(self._bag_path, name), 'w', encoding='utf-8') as out:
                    out.write(text)
            if os.path.lexists(self.path):
                if not self.replace:
                    raise BagError(f'output {self.path} appeared while writing; not '
                                   f'replacing it')
                # Moved into the staging folder first, removed with it below.
                os.rename(self.path, os.path.join(self._staging, 'replaced'))
            os.rename(self._bag_path, self.path)
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self._staging, ignore_errors=True)

    def abort(self):
        """Discard the temporary bag."""
        try:
            self._writer.abort()
        except (WriterError, OSError):
            pass
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False
