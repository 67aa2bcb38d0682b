"""RGB-D frames of rosbag2 bags (sqlite3 or mcap), read with the ``rosbags`` library.

An image topic (sensor_msgs/Image or CompressedImage), a depth topic (sensor_msgs/Image,
``32FC1`` metres or ``16UC1`` millimetres as REP 118; NaN, inf and 0 are invalid) and a
camera_info topic; colour and depth frames are paired by header stamps within a tolerance.
"""

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .rgbd_labels import clean_depth, make_sample, worker_id
from .tum import associate, intrinsics_for_image, load_camera


def _stamp(header):
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_from_msg(msg, msgtype):
    """RGB uint8 H x W x 3 of a sensor_msgs Image or CompressedImage.

    The node's decoder (:mod:`mtdp_ros.ros.image_input`): the same encodings, checks and
    errors (:class:`~mtdp_ros.ros.image_input.ImageRejected`, a ValueError).
    """
    from mtdp_ros.ros.image_input import compressed_msg_to_rgb, image_msg_to_rgb
    if msgtype.endswith('CompressedImage'):
        return compressed_msg_to_rgb(msg)
    return image_msg_to_rgb(msg)


def depth_from_msg(msg):
    """Metres (float32 H x W, 0 = invalid) of a depth Image: 32FC1 metres or 16UC1 mm."""
    encoding = msg.encoding.upper()
    if encoding not in ('32FC1', '16UC1', 'MONO16'):
        raise ValueError(f'depth encoding {msg.encoding!r} is not supported (REP 118: 32FC1 '
                         f'metres or 16UC1 millimetres)')
    dtype = np.dtype(np.float32 if encoding == '32FC1' else np.uint16)
    dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    data = np.frombuffer(bytes(msg.data), np.uint8)
    rows = data[:msg.height * msg.step].reshape(msg.height, msg.step)
    values = rows[:, :msg.width * dtype.itemsize].copy().view(dtype)
    values = values.reshape(msg.height, msg.width)
    depth = values.astype(np.float32)
    if encoding != '32FC1':
        depth = depth / 1000.0
    return clean_depth(depth)


def read_bag_frames(path, image_topic, depth_topic, camera_info_topic=None,
                    tolerance=0.02, camera=None, size=None, stride=1, max_frames=None):
    """[(RGB, depth metres, intrinsics, stamp ns)] of colour/depth pairs of a rosbag2 bag.

    Frames pair by header stamps (nearest within ``tolerance`` s, each used once).
    Intrinsics come from ``camera_info_topic`` (the message nearest in time; K of the
    colour image) or from ``camera`` (see ``load_camera``). With ``size`` (model H, W),
    frames are kept letterboxed at that size to bound memory. The bag is read twice:
    headers first (pairing), then only the chosen frames are decoded.
    """
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import get_typestore, Stores
    except ImportError:
        raise RuntimeError('reading bags needs the rosbags package (pip install '
                           'rosbags)') from None
    if not os.path.exists(path):
        raise FileNotFoundError(f'bag not found: {path}')
    if not camera_info_topic and camera is None:
        raise ValueError('intrinsics unknown: give data.camera_info_topic or data.camera')
    typestore = get_typestore(Stores.ROS2_JAZZY)
    stamps = {image_topic: [], depth_topic: []}
    infos = []
    with AnyReader([Path(path)], default_typestore=typestore) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        wanted = {image_topic: ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'),
                  depth_topic: ('sensor_msgs/msg/Image',)}
        if camera_info_topic:
            wanted[camera_info_topic] = ('sensor_msgs/msg/CameraInfo',)
        for topic, allowed in wanted.items():
            if topic not in topics:
                raise ValueError(f'{path}: no topic {topic}; it has {sorted(topics)}')
            if topics[topic] not in allowed:
                raise ValueError(f'{path}: topic {topic} is {topics[topic]}, expected '
                                 f'{" or ".join(allowed)}')
        connections = [c for c in reader.connections if c.topic in wanted]
        # Pass 1: header stamps (message n of a topic is (stamp, n)).
        for conn, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == camera_info_topic:
                infos.append((_stamp(msg.header), tuple(float(v) for v in msg.k)))
            else:
                stamps[conn.topic].append((_stamp(msg.header), len(stamps[conn.topic])))
        pairs = associate(stamps[image_topic], stamps[depth_topic],
                          int(round(tolerance * 1e9)))
        if not pairs:
            raise ValueError(f'{path}: no {image_topic} / {depth_topic} pairs within '
                             f'{tolerance} s')
        if camera_info_topic and not infos:
            raise ValueError(f'{path}: no messages on {camera_info_topic}')
        pairs = pairs[::max(1, int(stride))][:max_frames or None]
        chosen = {image_topic: {a[1]: k for k, (a, _) in enumerate(pairs)},
                  depth_topic: {b[1]: k for k, (_, b) in enumerate(pairs)}}
        decoded = [{} for _ in pairs]
        counters = {image_topic: 0, depth_topic: 0}
        # Pass 2: decode only the paired frames.
        for conn, _, raw in reader.messages(connections=[c for c in connections
                                                         if c.topic in counters]):
            number = counters[conn.topic]
            counters[conn.topic] += 1
            slot = chosen[conn.topic].get(number)
            if slot is None:
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == image_topic:
                decoded[slot]['image'] = image_from_msg(msg, conn.msgtype)
            else:
                decoded[slot]['depth'] = depth_from_msg(msg)
            done = decoded[slot]
            if 'image' in done and 'depth' in done and size is not None:
                stamp = pairs[slot][0][0]
                decoded[slot] = _finish_frame(done, stamp, infos, camera, size)
    frames = []
    for slot, done in enumerate(decoded):
        if isinstance(done, dict):
            done = _finish_frame(done, pairs[slot][0][0], infos, camera, size)
        frames.append(done)
    return frames


def _finish_frame(decoded, stamp, infos, camera, size):
    image, depth = decoded['image'], decoded['depth']
    if infos:
        k = min(infos, key=lambda info: abs(info[0] - stamp))[1]
        intrinsics = (k[0], k[4], k[2], k[5])
    else:
        intrinsics = intrinsics_for_image(camera, image.shape)
    if depth.shape != image.shape[:2]:
        # A depth camera registered to the colour one but at another resolution.
        depth = cv2.resize(depth, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    if size is not None:
        image, depth, intrinsics = _letterbox_frame(image, depth, intrinsics, size)
    return image, depth, intrinsics, stamp


def _letterbox_frame(image, depth, intrinsics, size):
    sample = make_sample(image, depth, intrinsics, size)
    image = (sample['image'].permute(1, 2, 0) * 255).round().byte().numpy()
    return image, sample['depth'][0].numpy(), tuple(sample['intrinsics'].tolist())


class RosbagRGBD(torch.utils.data.Dataset):
    """Training samples of colour/depth pairs of rosbag2 bags.

    The frames are held in memory at the model's size (about 0.5 MB a frame at 240 x 320).
    """

    def __init__(self, bags, image_size, image_topic, depth_topic, camera_info_topic=None,
                 tolerance=0.02, camera=None, augment=True, seed=0, stride=1,
                 max_frames=None):
        bags = [bags] if isinstance(bags, (str, os.PathLike)) else list(bags)
        if not bags:
            raise ValueError('no bag given')
        camera = load_camera(camera) if camera not in (None, 'auto') else None
        self.image_size = tuple(image_size)
        self.augment, self.seed = augment, seed
        self.frames = []
        for bag in bags:
            self.frames += read_bag_frames(os.fspath(bag), image_topic, depth_topic,
                                           camera_info_topic, tolerance, camera,
                                           self.image_size, stride, max_frames)
        self._draws = 0

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        image, depth, intrinsics, stamp = self.frames[index]
        rng = None
        if self.augment:
            self._draws += 1
            rng = np.random.default_rng([self.seed, index, self._draws, worker_id()])
        return make_sample(image, depth, intrinsics, self.image_size, self.augment, rng,
                           name=str(stamp))
