"""Fine-tuning data from your own RGB-D recordings: TUM RGB-D folders and rosbag2 bags.

Both sources give what a depth camera can supervise, in the model's target format:

* ``depth``: metric z-depth in metres (0 = no measurement, ignored by the loss);
* ``normals``: unit normals in the camera optical frame (x right, y down, z forward),
  facing the camera, derived from the depth with the camera intrinsics (back-projection,
  cross product of central neighbour differences); the zero vector (ignored) where the
  depth or a neighbour is missing or across a depth discontinuity;
* ``edge``: depth-discontinuity edges (1 where the right or lower neighbour lies across a
  relative depth jump of more than ``EDGE_JUMP``, as the synthetic scenes' depth edges),
  ``IGNORE_INDEX`` where the pixel or that neighbour has no depth.

Semantic labels do not exist here: the training loop leaves ``semseg`` out of the loss
and keeps it from drifting (``finetune`` section of the training config: distillation
from the starting model and/or frozen parameters).

TUM RGB-D folder (``rgbd_dataset_freiburg1_xyz`` and friends, or your own)::

    rgb/<t>.png  depth/<t>.png   (16-bit PNG, metres = value / depth_factor, 0 = invalid)
    rgb.txt  depth.txt           "timestamp path" lines, '#' comments
    associations.txt (optional)  "t_rgb rgb/x.png t_depth depth/y.png" (associate.py)

Without an association file, frames are paired by nearest timestamps within
``max_difference`` seconds (each depth frame used once, closest pairs first, as
associate.py does). Intrinsics: TUM's published calibrations (``fr1``, ``fr2``, ``fr3``,
``ros`` for the uncalibrated default), guessed from a ``freiburgN`` folder name with
``camera: auto``, or a camera file (YAML: ``fx, fy, cx, cy`` and optionally ``width,
height``; or a ROS camera_info YAML with ``camera_matrix``).

rosbag2 bags (sqlite3 or mcap) are read with the ``rosbags`` library: an image topic
(sensor_msgs/Image or CompressedImage), a depth topic (sensor_msgs/Image, ``32FC1``
metres or ``16UC1`` millimetres as REP 118; NaN, inf and 0 are invalid) and a
camera_info topic; colour and depth frames are paired by header stamps within a
tolerance.
"""

import copy
import glob
import math
import os
import re
import types
from pathlib import Path

import cv2
import numpy as np
import torch

from .datasets import collate, IMAGENET_MEAN_255, photometric_distortion, to_tensors

IGNORE_INDEX = 255
TUM_DEPTH_FACTOR = 5000.0
# Relative depth jump that makes a depth-discontinuity edge (the synthetic scenes' rule).
EDGE_JUMP = 0.05
# Published intrinsics of the TUM RGB-D benchmark at 640 x 480 (fx, fy, cx, cy).
TUM_CAMERAS = {
    'fr1': (517.3, 516.5, 318.6, 255.3),
    'fr2': (520.9, 521.0, 325.1, 249.7),
    'fr3': (535.4, 539.2, 320.1, 247.6),
    'ros': (525.0, 525.0, 319.5, 239.5),
}
TUM_SIZE = (480, 640)
# A recording folder's own calibration, used by ``camera: auto`` when present.
CAMERA_FILE = 'camera.yaml'
SUPERVISED_TASKS = ('depth', 'normals', 'edge')


# ----------------------------------------------------------------------------- geometry
def normals_from_depth(depth, intrinsics, jump=EDGE_JUMP):
    """Unit normals (H x W x 3, camera optical frame, facing the camera) of a depth map.

    ``depth`` H x W metres (0 or non-finite = invalid); ``intrinsics`` (fx, fy, cx, cy).
    Each pixel is back-projected to ``P = z ((u - cx) / fx, (v - cy) / fy, 1)``; the
    normal is ``(P[v+1] - P[v-1]) x (P[u+1] - P[u-1])``, normalised and turned towards the
    camera. Pixels on the border, without depth, with a neighbour without depth or across
    a relative depth jump larger than ``jump`` get the zero vector (ignored by the loss).
    """
    depth = _clean_depth(depth)
    height, width = depth.shape
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    normals = np.zeros((height, width, 3), np.float32)
    if height < 3 or width < 3:
        return normals
    centre = depth[1:-1, 1:-1]
    valid = centre > 0
    for neighbour in (depth[1:-1, 2:], depth[1:-1, :-2], depth[2:, 1:-1], depth[:-2, 1:-1]):
        valid &= (neighbour > 0) & (np.abs(neighbour - centre) <= jump
                                    * np.minimum(neighbour, centre))
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    normal = np.cross(dv, du)
    # Face the camera: the normal points against the viewing ray.
    facing = np.sign(-(normal * points[1:-1, 1:-1]).sum(-1, keepdims=True))
    normal = normal * np.where(facing == 0, 1.0, facing)
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    valid &= length[..., 0] > 0
    normal = np.where(valid[..., None], normal / np.maximum(length, 1e-12), 0.0)
    normals[1:-1, 1:-1] = normal
    return normals


def depth_edges(depth, jump=EDGE_JUMP):
    """Depth-discontinuity edges (H x W float32: 1 edge, 0 not, ``IGNORE_INDEX`` unknown).

    A pixel is an edge when its right or lower neighbour lies across a relative depth jump
    larger than ``jump``; it is unknown when it has no depth or such a neighbour has none.
    """
    depth = _clean_depth(depth)
    edge = np.zeros(depth.shape, np.float32)
    unknown = depth <= 0
    for axis in (1, 0):
        n = depth.shape[axis]
        a = np.take(depth, np.arange(n - 1), axis=axis)
        b = np.take(depth, np.arange(1, n), axis=axis)
        both = (a > 0) & (b > 0)
        crossing = both & (np.abs(a - b) > jump * np.minimum(a, b))
        missing = ~both
        index = [slice(None), slice(None)]
        index[axis] = slice(0, n - 1)
        edge[tuple(index)] = np.maximum(edge[tuple(index)], crossing)
        unknown[tuple(index)] |= missing
    edge[unknown] = IGNORE_INDEX
    return edge


def _clean_depth(depth):
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f'a depth map must be H x W, got shape {depth.shape}')
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def scale_intrinsics(intrinsics, scale, offset=(0, 0)):
    """Intrinsics after resizing by ``scale`` and shifting by ``offset`` (top, left) pixels.

    Pixel centres at integer coordinates (OpenCV): ``c' = (c + 0.5) * s - 0.5 + offset``.
    """
    fx, fy, cx, cy = intrinsics
    top, left = offset
    return (fx * scale, fy * scale, (cx + 0.5) * scale - 0.5 + left,
            (cy + 0.5) * scale - 0.5 + top)


def make_sample(image, depth, intrinsics, size, augment=False, rng=None, name=''):
    """One training sample (tensors in the model's target format) from an RGB-D frame.

    ``image`` H x W x 3 uint8 RGB, ``depth`` metres (the image's size or another: it is
    resized to the image with nearest neighbours), ``intrinsics`` of the image,
    ``size`` the model's (H, W). The frame is letterboxed into ``size`` (padding: mean
    colour, no depth), then normals and edges are derived at that resolution with the
    scaled intrinsics. ``augment``: horizontal flip and the photometric distortion of the
    dataset transform.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'an RGB frame must be H x W x 3 uint8, got {image.shape} '
                         f'{image.dtype}')
    depth = _clean_depth(depth)
    height, width = image.shape[:2]
    if depth.shape != (height, width):
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    new_h = max(1, min(target_h, round(height * scale)))
    new_w = max(1, min(target_w, round(width * scale)))
    if (new_h, new_w) != (height, width):
        mode = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=mode)
        depth = cv2.resize(depth, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    intr = scale_intrinsics(intrinsics, new_w / width, (top, left))
    canvas = np.empty((target_h, target_w, 3), np.uint8)
    canvas[...] = np.asarray(IMAGENET_MEAN_255).round().astype(np.uint8)
    canvas[top:top + new_h, left:left + new_w] = image
    padded = np.zeros((target_h, target_w), np.float32)
    padded[top:top + new_h, left:left + new_w] = depth
    image, depth = canvas, padded
    if augment:
        rng = rng or np.random.default_rng()
        if rng.random() < 0.5:
            image, depth = image[:, ::-1].copy(), depth[:, ::-1].copy()
            fx, fy, cx, cy = intr
            intr = (fx, fy, target_w - 1 - cx, cy)
        image = photometric_distortion(image, _PyRandom(rng))
    sample = {'name': name, 'image': image, 'depth': depth,
              'normals': normals_from_depth(depth, intr), 'edge': depth_edges(depth)}
    tensors = to_tensors(sample)
    tensors['intrinsics'] = torch.tensor(intr, dtype=torch.float32)
    return tensors


def _worker_id():
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


class _PyRandom:
    """The ``random.Random`` calls ``photometric_distortion`` makes, on a NumPy generator."""

    def __init__(self, rng):
        self.rng = rng

    def random(self):
        return float(self.rng.random())

    def uniform(self, low, high):
        return float(self.rng.uniform(low, high))

    def randint(self, low, high):
        return int(self.rng.integers(low, high + 1))


# ----------------------------------------------------------------------------- cameras
def load_camera(spec, root=None):
    """(fx, fy, cx, cy, (height, width) or None) from a camera name, file or 'auto'."""
    if spec in (None, 'auto'):
        own = os.path.join(os.fspath(root or ''), CAMERA_FILE)
        if root and os.path.isfile(own):
            return load_camera(own)
        match = re.search(r'freiburg([123])', os.path.basename(os.path.normpath(root or '')))
        if not match:
            raise ValueError(f'data.camera auto: cannot tell the camera of {root!r} (no '
                             f'{CAMERA_FILE}, no freiburg1/2/3 in its name); give camera: '
                             f'fr1 | fr2 | fr3 | ros | a camera YAML file')
        spec = f'fr{match.group(1)}'
    if spec in TUM_CAMERAS:
        return TUM_CAMERAS[spec] + (TUM_SIZE,)
    if not os.path.isfile(str(spec)):
        raise FileNotFoundError(f'camera file not found: {spec} (or use one of '
                                f'{sorted(TUM_CAMERAS)})')
    import yaml
    with open(spec, 'r', encoding='utf-8') as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ValueError(f'{spec}: not valid YAML: {exc}') from None
    if not isinstance(data, dict):
        raise ValueError(f'{spec}: a camera file must be a mapping')
    size = None
    if 'width' in data and 'height' in data:
        size = (int(data['height']), int(data['width']))
    elif 'image_width' in data and 'image_height' in data:
        size = (int(data['image_height']), int(data['image_width']))
    if all(k in data for k in ('fx', 'fy', 'cx', 'cy')):
        values = [data[k] for k in ('fx', 'fy', 'cx', 'cy')]
    elif isinstance(data.get('camera_matrix'), dict) and 'data' in data['camera_matrix']:
        k = list(data['camera_matrix']['data'])
        if len(k) != 9:
            raise ValueError(f'{spec}: camera_matrix.data must have 9 values')
        values = [k[0], k[4], k[2], k[5]]
    else:
        raise ValueError(f'{spec}: needs fx, fy, cx, cy (or a camera_info camera_matrix)')
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f'{spec}: fx, fy, cx, cy must be numbers') from None
    if not (values[0] > 0 and values[1] > 0):
        raise ValueError(f'{spec}: focal lengths must be positive, got {values[:2]}')
    return values + (size,)


def intrinsics_for_image(camera, image_shape):
    """The camera's (fx, fy, cx, cy) for an image of ``image_shape``.

    Scaled when the camera has a calibrated size of the same aspect ratio (e.g. a
    half-size TUM export); a size of another aspect ratio is an error.
    """
    fx, fy, cx, cy, size = camera
    if size is None or tuple(size) == tuple(image_shape[:2]):
        return fx, fy, cx, cy
    scale_h, scale_w = image_shape[0] / size[0], image_shape[1] / size[1]
    if abs(scale_h - scale_w) > 1e-3 * max(scale_h, scale_w):
        raise ValueError(f'images of {image_shape[1]} x {image_shape[0]} do not match the '
                         f'camera calibrated at {size[1]} x {size[0]}: give a camera file')
    return scale_intrinsics((fx, fy, cx, cy), scale_w)


# ----------------------------------------------------------------------------- TUM folders
def _data_lines(path):
    """(line number, stripped line) of a TUM text file, without blanks and # comments."""
    with open(path, 'r', encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if line and not line.startswith('#'):
                yield number, line


def read_tum_list(path):
    """[(timestamp, relative path)] of a TUM rgb.txt / depth.txt."""
    entries = []
    for number, line in _data_lines(path):
        parts = line.replace(',', ' ').split()
        try:
            entries.append((float(parts[0]), parts[1]))
        except (ValueError, IndexError):
            raise ValueError(f'{path}:{number}: expected "timestamp path", got '
                             f'{line!r}') from None
    return entries


def read_associations(path):
    """[(rgb path, depth path, t_rgb, t_depth)] of an associate.py output file."""
    pairs = []
    for number, line in _data_lines(path):
        parts = line.split()
        if len(parts) < 4:
            raise ValueError(f'{path}:{number}: expected "t_rgb rgb/x.png t_depth '
                             f'depth/y.png", got {line!r}')
        try:
            t_rgb, t_depth = float(parts[0]), float(parts[2])
        except ValueError:
            raise ValueError(f'{path}:{number}: timestamps must be numbers, got '
                             f'{line!r}') from None
        # associate.py pairs either stream with the other: keep the rgb file first.
        first, second = parts[1], parts[3]
        if first.startswith('depth') and not second.startswith('depth'):
            first, second, t_rgb, t_depth = second, first, t_depth, t_rgb
        pairs.append((first, second, t_rgb, t_depth))
    return pairs


def associate(first, second, max_difference=0.02):
    """Pairs of (a, b) entries with nearest timestamps within ``max_difference`` seconds.

    ``first``/``second``: [(timestamp, value)]. Closest pairs are taken first and every
    entry is used at most once (associate.py's rule); the result is in ``first``'s order.
    """
    first = sorted(first, key=lambda entry: entry[0])
    second = sorted(second, key=lambda entry: entry[0])
    times = np.array([t for t, _ in second])
    candidates = []
    for i, (t_a, _) in enumerate(first):
        if not len(times):
            break
        lo = np.searchsorted(times, t_a - max_difference, side='left')
        hi = np.searchsorted(times, t_a + max_difference, side='right')
        for j in range(lo, hi):
            candidates.append((abs(t_a - times[j]), i, j))
    candidates.sort()
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in candidates:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, first[i], second[j]))
    pairs.sort(key=lambda pair: pair[0])
    return [(a, b) for _, a, b in pairs]


def read_depth_png(path, factor=TUM_DEPTH_FACTOR):
    """Metres of a 16-bit depth PNG (value / factor; 0 stays 0 = invalid)."""
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f'cannot decode depth image {path}')
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f'{path}: a depth PNG must be single-channel 16-bit, got '
                         f'{raw.dtype} with shape {raw.shape}')
    return raw.astype(np.float32) / float(factor)


def tum_frames(root, max_difference=0.02):
    """[(rgb path, depth path, timestamp)] of a TUM folder (associations or timestamps)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'TUM RGB-D folder not found: {root}')
    assoc = [p for p in ('associations.txt', 'associate.txt', 'assoc.txt')
             if os.path.isfile(os.path.join(root, p))]
    if assoc:
        pairs = [(rgb, depth, t) for rgb, depth, t, _ in
                 read_associations(os.path.join(root, assoc[0]))]
    else:
        lists = [os.path.join(root, name) for name in ('rgb.txt', 'depth.txt')]
        missing = [p for p in lists if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f'{root}: no associations.txt and no {missing[0]}')
        rgb, depth = (read_tum_list(p) for p in lists)
        pairs = [(a[1], b[1], a[0]) for a, b in associate(rgb, depth, max_difference)]
    if not pairs:
        raise ValueError(f'{root}: no colour/depth pairs (max_difference {max_difference} s)')
    return [(os.path.join(root, a), os.path.join(root, b), t) for a, b, t in pairs]


class TUMRGBD(torch.utils.data.Dataset):
    """Training samples of one or several TUM RGB-D folders (see the module docstring)."""

    def __init__(self, roots, image_size, camera='auto', depth_factor=TUM_DEPTH_FACTOR,
                 max_difference=0.02, augment=True, seed=0):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        if not roots:
            raise ValueError('no TUM RGB-D folder given')
        self.image_size = tuple(image_size)
        self.depth_factor = float(depth_factor)
        self.augment = augment
        self.seed = seed
        self.frames = []
        for root in roots:
            root = os.fspath(root)
            cam = load_camera(camera, root)
            self.frames += [(rgb, depth, t, cam) for rgb, depth, t in
                            tum_frames(root, max_difference)]
        self._draws = 0

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        rgb_path, depth_path, stamp, camera = self.frames[index]
        image = cv2.imread(rgb_path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'cannot decode image {rgb_path}')
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        depth = read_depth_png(depth_path, self.depth_factor)
        rng = None
        if self.augment:
            self._draws += 1
            rng = np.random.default_rng([self.seed, index, self._draws, _worker_id()])
        return make_sample(image, depth, intrinsics_for_image(camera, image.shape),
                           self.image_size, self.augment, rng, name=f'{stamp:.6f}')


def write_tum_folder(root, frames, depth_factor=TUM_DEPTH_FACTOR, start_time=0.0,
                     period=1.0 / 30.0):
    """Write frames as a TUM RGB-D folder (rgb/, depth/, rgb.txt, depth.txt, associations).

    ``frames``: iterable of (RGB uint8 H x W x 3, depth metres H x W). Depth is stored as
    16-bit PNG of ``round(depth * depth_factor)`` (0 where invalid or out of range).
    Returns the number of frames written.
    """
    os.makedirs(os.path.join(root, 'rgb'), exist_ok=True)
    os.makedirs(os.path.join(root, 'depth'), exist_ok=True)
    rgb_lines, depth_lines, assoc_lines = [], [], []
    count = 0
    for count, (image, depth) in enumerate(frames, 1):
        stamp = start_time + (count - 1) * period
        name = f'{stamp:.6f}.png'
        depth = _clean_depth(depth)
        value = np.round(depth * depth_factor)
        value = np.where(value > 65535, 0, value).astype(np.uint16)
        cv2.imwrite(os.path.join(root, 'rgb', name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(root, 'depth', name), value)
        rgb_lines.append(f'{stamp:.6f} rgb/{name}')
        depth_lines.append(f'{stamp:.6f} depth/{name}')
        assoc_lines.append(f'{stamp:.6f} rgb/{name} {stamp:.6f} depth/{name}')
    for filename, lines in (('rgb.txt', rgb_lines), ('depth.txt', depth_lines),
                            ('associations.txt', assoc_lines)):
        with open(os.path.join(root, filename), 'w', encoding='utf-8') as handle:
            handle.write('# timestamp filename\n' if filename != 'associations.txt' else '')
            handle.write('\n'.join(lines) + '\n')
    return count


def export_synthetic_tum(root, seeds, height=240, width=320, zoom=1.0, device='cpu'):
    """Render synthetic scenes ``seeds`` and write them as a TUM RGB-D folder.

    Scenes are rendered at ``height`` x ``width`` and the centre ``1 / zoom`` of each is
    kept: a camera with ``zoom`` times the generator's focal length at the same pixel
    pitch (a domain shift for models trained on the generator's camera). The folder's
    ``camera.yaml`` holds the intrinsics of the written frames. Returns them.
    """
    from .synthetic import intrinsics_for, render_batch
    if not zoom >= 1.0:
        raise ValueError(f'zoom must be >= 1, got {zoom}')
    crop_h, crop_w = int(round(height / zoom)), int(round(width / zoom))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    fx, fy, cx, cy = intrinsics_for(height, width)
    intrinsics = (fx, fy, cx - left, cy - top)
    frames = []
    seeds = list(seeds)
    for first in range(0, len(seeds), 8):
        batch = render_batch(seeds[first:first + 8], height, width, device=device)
        for index in range(batch['image'].shape[0]):
            image = (batch['image'][index].permute(1, 2, 0) * 255).round().byte().cpu()
            depth = batch['depth'][index, 0].cpu()
            frames.append((image.numpy()[top:top + crop_h, left:left + crop_w],
                           depth.numpy()[top:top + crop_h, left:left + crop_w]))
    write_tum_folder(root, frames)
    import yaml
    with open(os.path.join(root, CAMERA_FILE), 'w', encoding='utf-8') as handle:
        yaml.safe_dump({'fx': float(intrinsics[0]), 'fy': float(intrinsics[1]),
                        'cx': float(intrinsics[2]), 'cy': float(intrinsics[3]),
                        'width': crop_w, 'height': crop_h}, handle)
    return intrinsics


# ----------------------------------------------------------------------------- rosbag2
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
    return _clean_depth(depth)


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
            rng = np.random.default_rng([self.seed, index, self._draws, _worker_id()])
        return make_sample(image, depth, intrinsics, self.image_size, self.augment, rng,
                           name=str(stamp))


# ----------------------------------------------------------------------------- building
def _paths(value):
    if value is None:
        return []
    values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    out = []
    for item in values:
        matches = sorted(glob.glob(os.fspath(item)))
        out += matches or [os.fspath(item)]
    return out


def training_focal_px(dataset, count=16):
    """The focal length (px, in the model's input) of the frames a model is fine-tuned on.

    The median of (fx + fy) / 2 over up to ``count`` frames spread over ``dataset``: the
    fine-tuned model's ``train_focal_px``, so that the node's focal correction
    (depth.focal_correction) rescales depth from this camera, not the starting model's.
    """
    size = len(dataset)
    if size == 0:
        raise ValueError('the RGB-D dataset has no frames')
    picks = sorted({round(i * (size - 1) / max(count - 1, 1)) for i in range(min(count, size))})
    focals = [float(dataset[i]['intrinsics'][:2].mean()) for i in picks]
    return float(np.median(focals))


def build_rgbd_dataset(data, image_size, roots=None, augment=None, seed=0):
    """The dataset of a training config's ``data`` section (source ``tum`` or ``rosbag``).

    ``roots`` overrides ``data.root`` (e.g. ``data.val_root`` for validation); ``augment``
    overrides ``data.augment``.
    """
    roots = _paths(data['root'] if roots is None else roots)
    if not roots:
        raise ValueError(f'data.root (the {data["source"]} folders or bags) is required')
    augment = data['augment'] if augment is None else augment
    if data['source'] == 'tum':
        return TUMRGBD(roots, image_size, camera=data['camera'],
                       depth_factor=data['depth_factor'],
                       max_difference=data['max_time_difference'], augment=augment,
                       seed=seed)
    if data['source'] == 'rosbag':
        for key in ('image_topic', 'depth_topic'):
            if not data[key]:
                raise ValueError(f'data.{key} is required for source rosbag')
        return RosbagRGBD(roots, image_size, data['image_topic'], data['depth_topic'],
                          data['camera_info_topic'], data['max_time_difference'],
                          camera=data['camera'], augment=augment, seed=seed)
    raise ValueError(f'not an RGB-D source: {data["source"]!r}')


# Samples of ``make_sample`` stack like any others (intrinsics included).
collate_rgbd = collate


# ----------------------------------------------------------------------------- fine-tuning
RGBD_SOURCES = ('tum', 'rosbag')


def matches_pattern(name, pattern):
    """Whether ``pattern`` is a dotted prefix of parameter ``name`` or one of its parts.

    'encoder' matches encoder.*, 'semseg' every parameter of the semantic task only.
    """
    parts = name.split('.')
    pattern_parts = pattern.split('.')
    if parts[:len(pattern_parts)] == pattern_parts:
        return True
    return len(pattern_parts) == 1 and pattern in parts


def _stay_in_eval_mode(module, mode=True):
    """``train()`` of a BatchNorm layer kept in eval mode (see ``FineTune``)."""
    return torch.nn.Module.train(module, False)


class FineTune:
    """What RGB-D fine-tuning adds to the training loop (the config's ``finetune`` section).

    * ``loss_tasks``: the model's tasks the data supervises (depth, normals, edge);
    * ``freeze``: parameters matching these patterns (see ``matches_pattern``) get
      ``requires_grad = False`` before the optimiser is built;
    * ``distill`` > 0: a frozen copy of the starting model (the teacher) gives semantic
      logits for every batch; ``distill * distillation_loss(student, teacher)`` over the
      pixels inside the frame is added to the objective (key ``semseg_distill``). The
      teacher runs in train mode with the random state the student's forward pass then
      reuses: MLoRE's noisy top-k routing draws the same noise in both, so the term
      measures drift from the start, not routing noise (against the teacher's noise-free
      outputs it was measured to pull the classes away from the start);
    * ``batchnorm: frozen``: every BatchNorm layer stays in eval mode (running statistics
      of the starting model, affine parameters still trained unless frozen). Small
      fine-tuning batches give noisy batch statistics, and in train mode the semantic
      path's statistics would drift to the new data even with its parameters frozen;
      the student in train mode then computes what the teacher computes, so the
      distillation term starts at zero.
    """

    def __init__(self, model, section, data_source):
        config = model.config
        self.loss_tasks = tuple(t for t in config.tasks if t in SUPERVISED_TASKS)
        unsupervised = [t for t in config.tasks if t not in SUPERVISED_TASKS]
        if data_source in RGBD_SOURCES and config.is_diffusion and unsupervised:
            raise ValueError(f'RGB-D fine-tuning of TaskDiffusion models is not supported: '
                             f'their training step needs labels of every task and '
                             f'{unsupervised} have none here')
        if not self.loss_tasks:
            raise ValueError(f'the model has none of the tasks RGB-D data supervises '
                             f'({list(SUPERVISED_TASKS)})')
        self.weight = float(section['distill'])
        self.temperature = float(section['distill_temperature'])
        self.frozen = []
        patterns = list(section['freeze'] or [])
        for pattern in patterns:
            hits = [n for n, p in model.named_parameters() if matches_pattern(n, pattern)]
            if not hits:
                raise ValueError(f'finetune.freeze: {pattern!r} matches no parameter of '
                                 f'the model')
            self.frozen += hits
        self.frozen = sorted(set(self.frozen))
        for name, param in model.named_parameters():
            if name in self.frozen:
                param.requires_grad_(False)
        self.frozen_norms = []
        if section['batchnorm'] == 'frozen':
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.train = types.MethodType(_stay_in_eval_mode, module)
                    module.eval()
                    self.frozen_norms.append(module)
        self.teacher = None
        if self.weight > 0:
            if 'semseg' not in config.tasks:
                raise ValueError('finetune.distill needs a model with a semseg task')
            self.teacher = copy.deepcopy(model).eval()
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        self._teacher_logits = None

    def to(self, device):
        """Move the teacher to ``device``."""
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def before_forward(self, x):
        """Run the teacher on batch ``x``; call right before the student's forward pass.

        The random state is restored afterwards, so the student draws the same routing
        noise as the teacher did.
        """
        if self.teacher is None:
            return
        devices = [x.device] if x.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            self.teacher.train()            # noisy routing as the student (BatchNorm stays)
            try:
                with torch.no_grad():
                    self._teacher_logits = self.teacher.forward_train(x)['pred']['semseg']
            finally:
                self.teacher.eval()

    def add_losses(self, losses, x, outputs, targets):
        """Add the distillation term to a loss dict of ``MultiTaskLoss`` (in place)."""
        if self.teacher is None:
            return losses
        from .losses import distillation_loss
        teacher_logits = self._teacher_logits
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)['semseg']
        self._teacher_logits = None
        inside = targets['depth'] > 0 if 'depth' in targets else None
        term = distillation_loss(outputs['pred']['semseg'], teacher_logits,
                                 self.temperature, inside)
        losses['semseg_distill'] = term.detach()
        losses['total'] = losses['total'] + self.weight * term
        return losses


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_rgbd(model, dataset, teacher=None, tasks=('depth',), batch_size=8, device=None):
    """Metrics of ``model`` on an RGB-D dataset (no augmentation wanted), a nested dict.

    ``tasks``: the supervised tasks to score (depth, normals, edge). With ``teacher`` (the
    starting model), ``semseg_agreement`` gives the fraction of pixels with depth (i.e.
    inside the frame) whose semantic class matches the teacher's, as
    ``scores['semseg_agreement']['with_start']``.
    """
    from .metrics import MultiTaskMeter
    config = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    tasks = [t for t in tasks if t in config.tasks]
    meter = MultiTaskMeter(tasks, config.num_outputs)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    if teacher is not None:
        teacher.eval()
    agree, counted = 0, 0
    try:
        for first in range(0, len(dataset), batch_size):
            batch = collate_rgbd([dataset[i] for i in
                                  range(first, min(first + batch_size, len(dataset)))])
            x = (batch['image'].to(device) - mean) / std
            raw = model(x)
            meter.update({t: raw[t].float() for t in tasks},
                         {t: batch[t].to(device) for t in tasks})
            if teacher is not None and 'semseg' in raw:
                inside = batch['depth'].to(device)[:, 0] > 0
                same = raw['semseg'].argmax(1) == teacher(x)['semseg'].argmax(1)
                agree += int((same & inside).sum())
                counted += int(inside.sum())
    finally:
        model.train(was_training)
    scores = meter.score()
    if teacher is not None:
        scores['semseg_agreement'] = {'with_start': agree / counted if counted else math.nan}
    return scores


__all__ = ['FineTune', 'RGBD_SOURCES', 'RosbagRGBD', 'TUMRGBD', 'TUM_CAMERAS', 'associate',
           'build_rgbd_dataset', 'collate_rgbd', 'depth_edges', 'depth_from_msg', 'evaluate_rgbd',
           'export_synthetic_tum',
           'image_from_msg', 'load_camera', 'make_sample', 'normals_from_depth',
           'read_associations', 'read_bag_frames', 'read_depth_png', 'read_tum_list',
           'tum_frames', 'write_tum_folder']
