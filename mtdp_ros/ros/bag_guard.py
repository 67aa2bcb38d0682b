"""What ``mtdp bag`` trusts in a bag it reads: bounded decompression, checked definitions.

A recorded bag is input like any other. Two things in it cost more than its size or lie
about what it holds:

- **Decompression.** An mcap chunk (zstd or lz4) or a message of a bag compressed per
  message (zstd) may inflate to any size: a 98.5 kB mcap can hold a chunk of 3 GiB.
  rosbags decompresses without a bound, so its decompressors are replaced here (once, at
  import) by bounded ones: a chunk must declare an uncompressed size within
  :attr:`ReadLimits.max_chunk_bytes` and never yields more than it declared; a message
  decompresses to at most :attr:`ReadLimits.max_message_bytes`. Breaking a limit raises
  rosbags' ``ReaderError`` naming it, which the reader reports as a damaged bag.
- **Message definitions.** A connection states its type's definition (text) and, from
  ROS 2 Iron on, its RIHS01 hash. Messages are deserialised with the Jazzy definitions of
  the type *name*; when the stated definition describes other fields, the bytes mean
  something else. :func:`definition_problem` compares the stated definition (parsed, so
  comments and layout do not matter) and hash with the type that will be used.
"""

import dataclasses
import re

from rosbags.rosbag2 import reader as rosbags_reader
from rosbags.rosbag2 import storage_mcap
from rosbags.rosbag2.errors import ReaderError
from rosbags.typesys import get_types_from_idl, get_types_from_msg, Stores
from rosbags.typesys import get_typestore

try:    # the module rosbags itself uses (Python 3.14's, or its backport)
    from compression import zstd
except ImportError:     # pragma: no cover - Python < 3.14
    from backports import zstd
from lz4.frame import LZ4FrameDecompressor

MIB = 1 << 20
# A 4K rgb8 frame is 25 MB, 8K rgb16 200 MB: 256 MiB leaves room for any camera image.
DEFAULT_MAX_MESSAGE_BYTES = 256 * MIB
# rosbag2 writes mcap chunks of ~1 MB, but one large message makes a chunk of its size.
DEFAULT_MAX_CHUNK_BYTES = 1024 * MIB
# rosbag2's concatenated definitions: a line of 80 '=' between the types.
_SEPARATOR = re.compile(r'^={80}\s*$', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Bounds on what reading a bag may allocate (bytes)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES


# The limits of the bag being read: rosbags calls the decompressors without context, and a
# process reads one bag at a time (set by bag_io.open_bag).
_ACTIVE = [ReadLimits()]


def set_limits(limits):
    """Apply ``limits`` to every bag read from now on in this process."""
    _ACTIVE[0] = limits


def active_limits():
    """Return the limits in force."""
    return _ACTIVE[0]


def _size_text(size):
    return f'{size / MIB:.1f} MiB' if size >= MIB else f'{size} bytes'


def chunk_size_problem(declared):
    """Text naming a chunk whose declared uncompressed size is over the limit, else None."""
    limit = _ACTIVE[0].max_chunk_bytes
    if declared > limit:
        return (f'a chunk declares {_size_text(declared)} uncompressed, over the limit of '
                f'{_size_text(limit)} (--max-chunk-mb)')
    return None


def _bounded_chunk(decompressor_class):
    def decompress(data, size):
        problem = chunk_size_problem(size)
        if problem:
            raise ReaderError(problem)
        # One byte more than declared tells a chunk that inflates further, without
        # allocating more than that.
        raw = decompressor_class().decompress(data, max_length=size + 1)
        if len(raw) > size:
            raise ReaderError(f'a chunk decompresses to more than the {size} bytes it '
                              f'declares (damaged or crafted)')
        return raw
    return decompress


def bounded_zstd(data, limit):
    """Decompress zstd ``data`` (one or more frames) to at most ``limit`` bytes.

    ReaderError when the content is longer than ``limit`` or the data is truncated.
    """
    pieces, total = [], 0
    data = bytes(data)
    while data:
        decompressor = zstd.ZstdDecompressor()
        piece = decompressor.decompress(data, max_length=limit - total + 1)
        total += len(piece)
        if total > limit:
            raise ReaderError(f'a message decompresses to more than {_size_text(limit)}, '
                              f'the limit (--max-message-mb)')
        if not decompressor.eof:
            raise ReaderError('a compressed message is truncated')
        pieces.append(piece)
        data = decompressor.unused_data
    return b''.join(pieces)


class _BoundedZstdModule:
    """rosbags' ``zstd`` module with a bounded ``decompress`` (per-message compression)."""

    open = staticmethod(zstd.open)

    @staticmethod
    def decompress(data):
        return bounded_zstd(data, _ACTIVE[0].max_message_bytes)


storage_mcap.DECOMPRESSORS['zstd'] = _bounded_chunk(zstd.ZstdDecompressor)
storage_mcap.DECOMPRESSORS['lz4'] = _bounded_chunk(LZ4FrameDecompressor)
rosbags_reader.zstd = _BoundedZstdModule

_JAZZY = []


def jazzy():
    """Return the ROS 2 Jazzy typestore of rosbags (definitions and hashes), made once."""
    if not _JAZZY:
        _JAZZY.append(get_typestore(Stores.ROS2_JAZZY))
    return _JAZZY[0]


def _full_name(name):
    # Definitions name nested types 'pkg/Type' (msg) or 'pkg/msg/Type' (idl).
    parts = name.strip().split('/')
    return f'{parts[0]}/msg/{parts[1]}' if len(parts) == 2 else name.strip()


def parse_definition(text, msgtype, idl=False):
    """The types (rosbags' fielddefs) of a rosbag2 concatenated message definition."""
    sections = _SEPARATOR.split(text)
    if idl:
        types = {}
        for section in sections:
            body = section.partition('\n')[2] if section.startswith('IDL:') else section
            if body.strip():
                types.update(get_types_from_idl(body))
        return types
    types = dict(get_types_from_msg(sections[0], msgtype))
    for section in sections[1:]:
        header, _, body = section.lstrip('\n').partition('\n')
        if not header.startswith('MSG:'):
            raise ValueError(f'a section starts with {header[:40]!r}, not "MSG: <type>"')
        types.update(get_types_from_msg(body, _full_name(header[4:])))
    return types


def _names_in(value, known):
    """Type names of ``known`` inside a nested fielddef tuple."""
    if isinstance(value, str):
        return {value} if value in known else set()
    if isinstance(value, (tuple, list)):
        return set().union(*(_names_in(item, known) for item in value)) if value else set()
    return set()


def _stated_hash(types, msgtype):
    """RIHS01 of ``msgtype`` as ``types`` define it; nested types they omit taken as Jazzy's."""
    reference = jazzy().fielddefs
    complete = dict(types)
    todo = [msgtype]
    while todo:
        name = todo.pop()
        if name not in complete:
            if name not in reference:
                raise ValueError(f'it uses {name}, which it does not define')
            complete[name] = reference[name]
        todo.extend(_names_in(complete[name], set(reference) | set(complete)) - {name})
    store = get_typestore(Stores.EMPTY)
    store.register(complete)
    return store.hash_rihs01(msgtype)


def definition_problem(connection):
    """Text saying how ``connection``'s stated type differs from Jazzy's, else None.

    Compares its RIHS01 hash (when the bag has one) and its message definition (when it
    has one) with the Jazzy type of its ``msgtype``.
    """
    definition = getattr(connection, 'msgdef', None)
    key = (connection.msgtype, connection.digest or '',
           None if definition is None else (definition.format.name, definition.data))
    if key not in _CHECKED:     # parsing takes milliseconds; bags repeat connections
        _CHECKED[key] = _definition_problem(connection)
    return _CHECKED[key]


_CHECKED = {}


def _definition_problem(connection):
    msgtype = connection.msgtype
    store = jazzy()
    if msgtype not in store.fielddefs:
        return f'its type {msgtype} is unknown to ROS 2 Jazzy'
    expected = store.hash_rihs01(msgtype)
    digest = connection.digest or ''
    if digest.startswith('RIHS01_') and digest != expected:
        return (f'its type hash {digest} is not that of {msgtype} ({expected}): the bag '
                f'was written with another definition of the type')
    definition = getattr(connection, 'msgdef', None)
    if definition is None or not (definition.data or '').strip():
        return None     # bags before ROS 2 Iron may carry no definition
    try:
        types = parse_definition(definition.data, msgtype,
                                 idl=definition.format.name == 'IDL')
        stated = _stated_hash(types, msgtype)
    except Exception as exc:  # noqa: B902 - the parsers raise several types
        text = ' '.join(str(exc).split()) or type(exc).__name__
        return f'its message definition of {msgtype} cannot be read: {text[:200]}'
    if stated != expected:
        return (f'its message definition of {msgtype} differs from the ROS 2 definition '
                f'(fields, types or nested types): the bytes would be read as another type')
    return None
