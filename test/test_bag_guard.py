"""``mtdp bag`` against hostile or broken bags, and its clean exits.

Decompression bombs (an mcap zstd chunk of 3 GiB in a file of ~100 kB; a per-message
compressed sqlite3 bag), message definitions that lie about the type (a false definition,
flipped bytes, a wrong type hash), the output folder checked before the model loads, and
SIGINT/SIGTERM in the middle of a bag. Bags are written here with rosbags; the bombs are
made in the test (nothing binary is committed).
"""

import glob
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_typestore

from mtdp_ros.cli import main
from ros_harness import TINY_MLORE, pattern_image, write_checkpoint, write_config

try:
    from compression import zstd
except ImportError:
    from backports import zstd

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
IMAGE = 'sensor_msgs/msg/Image'
TOPIC = '/camera/image_raw'
GIB = 1 << 30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """The tiny MLoRE config and checkpoint."""
    directory = tmp_path_factory.mktemp('model')
    return write_config(directory, TINY_MLORE), write_checkpoint(directory, TINY_MLORE)


def _image(rgb, index=0):
    header = TYPESTORE.types['std_msgs/msg/Header'](
        stamp=TYPESTORE.types['builtin_interfaces/msg/Time'](sec=index, nanosec=0),
        frame_id='camera')
    return TYPESTORE.types[IMAGE](header=header, height=rgb.shape[0], width=rgb.shape[1],
                                  encoding='rgb8', is_bigendian=0, step=rgb.shape[1] * 3,
                                  data=np.ascontiguousarray(rgb).reshape(-1))


def write_bag(path, frames, storage=StoragePlugin.MCAP, compression=None, size=(48, 80),
              msgdef=None, rihs01=None, noise=False, topic=TOPIC):
    """A bag of ``frames`` rgb8 images on ``topic`` (definition and hash given, or Jazzy's)."""
    writer = Writer(path, version=9, storage_plugin=storage)
    if compression is not None:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        if msgdef is None:
            connection = writer.add_connection(topic, IMAGE, typestore=TYPESTORE)
        else:
            connection = writer.add_connection(topic, IMAGE, msgdef=msgdef, rihs01=rihs01)
        rng = np.random.default_rng(0)
        for index in range(frames):
            rgb = (rng.integers(0, 256, size + (3,), dtype=np.uint8) if noise
                   else pattern_image(*size, seed=index))
            writer.write(connection, 1_000_000_000 * (index + 1),
                         TYPESTORE.serialize_cdr(_image(rgb, index), IMAGE))
    return path


def run_bag(model, *args):
    """``mtdp bag`` in this process; returns the exit code."""
    return main(['bag', *args, '--model', model[0], '--checkpoint', model[1],
                 '--device', 'cpu', '--no-progress'])


def one_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('mtdp bag: error: '), lines
    return lines[0]


# --- decompression bombs ---------------------------------------------------------------

def zstd_bomb(size):
    """A zstd frame of ``size`` zero bytes (about 32 bytes per 1 MiB), made in pieces."""
    compressor = zstd.ZstdCompressor()
    block = bytes(64 << 20)
    pieces = [compressor.compress(block) for _ in range(size // len(block))]
    pieces.append(compressor.flush())
    return b''.join(pieces)


def skippable_frame(length):
    """A zstd skippable frame of ``length`` bytes in all (decoders ignore it)."""
    assert length >= 8
    return struct.pack('<II', 0x184D2A50, length - 8) + bytes(length - 8)


def _records(data):
    """(opcode, start of content, length) of the top-level records of an mcap file."""
    position = 8
    while position < len(data) - 8:
        opcode = data[position]
        length = struct.unpack_from('<Q', data, position + 1)[0]
        yield opcode, position + 9, length
        if opcode == 0x02:      # Footer
            return
        position += 9 + length


def plant_bomb(mcap_file, inflated, declared):
    """Replace the (only) zstd chunk's data by a frame inflating to ``inflated`` bytes.

    The compressed size stays the same (a skippable frame fills up), so no offset moves;
    the chunk and its index declare ``declared`` bytes uncompressed; the CRC is cleared.
    """
    data = bytearray(open(mcap_file, 'rb').read())
    bomb = zstd_bomb(inflated)
    chunks = 0
    for opcode, start, _ in _records(data):
        if opcode == 0x06:      # Chunk: start, end, uncompressed size, crc, compression,...
            struct.pack_into('<QI', data, start + 16, declared, 0)
            compression_length = struct.unpack_from('<I', data, start + 28)[0]
            assert data[start + 32:start + 32 + compression_length] == b'zstd'
            sizes = start + 32 + compression_length
            compressed = struct.unpack_from('<Q', data, sizes)[0]
            assert compressed >= len(bomb) + 8, (compressed, len(bomb))
            data[sizes + 8:sizes + 8 + compressed] = bomb + skippable_frame(
                compressed - len(bomb))
            chunks += 1
        elif opcode == 0x08:    # ChunkIndex: ..., compression, compressed, uncompressed size
            offsets_length = struct.unpack_from('<I', data, start + 32)[0]
            position = start + 36 + offsets_length + 8
            compression_length = struct.unpack_from('<I', data, position)[0]
            struct.pack_into('<Q', data, position + 4 + compression_length + 8, declared)
    assert chunks == 1
    with open(mcap_file, 'wb') as handle:
        handle.write(data)
    return len(data)


@pytest.fixture(scope='module')
def chunk_bombs(tmp_path_factory):
    """Two ~120 kB mcap bags whose chunk inflates to 3 GiB: declared as such, or as small."""
    directory = tmp_path_factory.mktemp('bombs')
    bombs = {}
    for name, declared in (('honest', 3 * GIB), ('lying', None)):
        path = str(directory / name)
        # One frame of noise: its chunk compresses to about its size, room for the bomb.
        write_bag(path, 1, compression=CompressionMode.STORAGE, size=(200, 200), noise=True)
        mcap_file = os.path.join(path, f'{name}.mcap')
        if declared is None:
            declared = 200 * 200 * 3 + 1000     # about what the real chunk held
        size = plant_bomb(mcap_file, 3 * GIB, declared)
        assert size < 200_000
        bombs[name] = path
    return bombs


def _run_measured(argv, timeout=300):
    """Run a command; (exit code, stderr, peak RSS in MB of that process alone)."""
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            os.wait4(process.pid, 0)
            pytest.fail(f'{argv} still running after {timeout} s')
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(status), process.stderr.read(), usage.ru_maxrss / 1024


@pytest.mark.slow
@pytest.mark.parametrize('kind, reason', [
    ('honest', 'a chunk declares 3072.0 MiB uncompressed, over the limit of 1024.0 MiB'),
    ('lying', 'decompresses to more than the'),
])
def test_chunk_bomb_is_refused_without_inflating(tmp_path, model, chunk_bombs, kind, reason):
    # In its own process: its peak memory is the measure (a 3 GiB chunk would show).
    code, err, peak_mb = _run_measured(
        [sys.executable, '-m', 'mtdp_ros.cli', 'bag', chunk_bombs[kind], '--out',
         str(tmp_path / 'out'), '--image-topic', TOPIC, '--model', model[0], '--checkpoint',
         model[1], '--device', 'cpu', '--no-progress'])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f'mtdp bag: error: cannot read bag {chunk_bombs[kind]}')
    assert reason in lines[0], lines[0]
    assert peak_mb < 1500, peak_mb      # the interpreter, torch and rclpy: ~600 MB here
    assert os.listdir(tmp_path) == []


def test_chunk_limit_is_an_option(tmp_path, model, capsys):
    in_path = write_bag(str(tmp_path / 'in'), 2, compression=CompressionMode.STORAGE,
                        size=(200, 200), noise=True)
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC,
                   '--max-chunk-mb', '0.05') == 2
    assert 'over the limit of 52428 bytes (--max-chunk-mb)' in one_error_line(capsys)
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC,
                   '--tasks', 'depth') == 0


def test_message_size_limit(tmp_path, model, capsys):
    # 200 x 200 rgb8: 120,000 bytes of pixels per message.
    in_path = write_bag(str(tmp_path / 'in'), 2, storage=StoragePlugin.SQLITE3,
                        size=(200, 200))
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC,
                   '--max-message-mb', '0.1') == 2
    error = one_error_line(capsys)
    assert f'a message of {TOPIC} at 1000000000 ns has' in error
    assert 'over the limit of 104857 (--max-message-mb)' in error
    assert sorted(os.listdir(tmp_path)) == ['in']


def test_message_compression_bomb(tmp_path, model, capsys):
    """A bag compressed per message (zstd) whose message inflates far beyond the limit."""
    in_path = write_bag(str(tmp_path / 'in'), 1, storage=StoragePlugin.SQLITE3,
                        compression=CompressionMode.MESSAGE)
    database = glob.glob(os.path.join(in_path, '*.db3'))[0]
    with sqlite3.connect(database) as connection:
        connection.execute('UPDATE messages SET data = ?', (zstd_bomb(256 << 20),))
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC,
                   '--max-message-mb', '8') == 2
    error = one_error_line(capsys)
    assert 'a message decompresses to more than 8.0 MiB, the limit (--max-message-mb)' in error
    assert sorted(os.listdir(tmp_path)) == ['in']


# --- message definitions ---------------------------------------------------------------

def _definition(msgtype):
    return TYPESTORE.generate_msgdef(msgtype, ros_version=2)[0]


def test_definitions_are_checked_against_the_type_read(tmp_path, model, capsys):
    image_hash = TYPESTORE.hash_rihs01(IMAGE)
    cases = {
        # The definition of another type under the Image type name (and Image's hash).
        'false_definition': dict(msgdef=_definition('sensor_msgs/msg/CameraInfo'),
                                 rihs01=image_hash),
        # The right definition, the hash of another type.
        'false_hash': dict(msgdef=_definition(IMAGE),
                           rihs01=TYPESTORE.hash_rihs01('sensor_msgs/msg/CameraInfo')),
    }
    for name, connection in cases.items():
        in_path = write_bag(str(tmp_path / name), 2, **connection)
        for extra in ([], ['--copy-input']):
            capsys.readouterr()
            assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic',
                           TOPIC, *extra) == 2, name
            error = one_error_line(capsys)
            assert f'image topic {TOPIC}: its ' in error, error
            expected = ('its type hash' if name == 'false_hash'
                        else 'its message definition of sensor_msgs/msg/Image differs')
            assert expected in error, error
    assert not os.path.exists(tmp_path / 'out')

    # Flipped bytes in a recorded definition (both copies: data section and summary).
    flipped = write_bag(str(tmp_path / 'flipped'), 2)
    mcap_file = os.path.join(flipped, 'flipped.mcap')
    data = open(mcap_file, 'rb').read()
    assert data.count(b'uint32 height') == 2
    with open(mcap_file, 'wb') as handle:
        handle.write(data.replace(b'uint32 height', b'uint32 heighu'))
    capsys.readouterr()
    assert run_bag(model, flipped, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC) == 2
    assert 'its message definition of sensor_msgs/msg/Image differs' in one_error_line(capsys)


def test_recorded_definitions_with_comments_are_accepted(tmp_path, model):
    """ros2 bag records the .msg files with their comments: same type, accepted."""
    text = _definition(IMAGE)
    commented = ('# This message contains an uncompressed image\n\n'
                 + text.replace('uint32 height', 'uint32 height         # image height, '
                                'that is, number of rows', 1))
    in_path = write_bag(str(tmp_path / 'in'), 2, msgdef=commented,
                        rihs01=TYPESTORE.hash_rihs01(IMAGE))
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic', TOPIC,
                   '--tasks', 'depth') == 0


# --- output checked first; signals -----------------------------------------------------

def test_output_folder_is_checked_before_the_model_loads(tmp_path, model, capsys,
                                                         monkeypatch):
    import mtdp_ros.cli.bag as bag_cli

    def no_model(args):
        raise AssertionError('the model was loaded before the output folder was checked')

    monkeypatch.setattr(bag_cli, 'engine_from_args', no_model)
    in_path = write_bag(str(tmp_path / 'in'), 1)
    assert run_bag(model, in_path, '--out', str(tmp_path / 'missing' / 'out'),
                   '--image-topic', TOPIC) == 2
    assert 'folder of the output' in one_error_line(capsys)


def _wait_for(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_removes_the_partial_bag_and_exits_with_one_line(tmp_path, model, signum):
    in_path = write_bag(str(tmp_path / 'in'), 400)     # seconds of work for the tiny model
    out_path = str(tmp_path / 'out')
    process = subprocess.Popen(
        [sys.executable, '-m', 'mtdp_ros.cli', 'bag', in_path, '--out', out_path,
         '--image-topic', TOPIC, '--model', model[0], '--checkpoint', model[1],
         '--device', 'cpu', '--no-progress'],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        # The temporary bag exists once frames are being written.
        _wait_for(lambda: glob.glob(str(tmp_path / '.out.*.partial' / 'out' / '*.mcap'))
                  or process.poll() is not None, 'the partial bag')
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines() == [
        f'mtdp bag: interrupted by {name}: stopped, no partial output left'], err
    assert out == ''
    assert sorted(os.listdir(tmp_path)) == ['in']
