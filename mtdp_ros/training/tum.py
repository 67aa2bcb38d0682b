"""TUM RGB-D folders: cameras, file lists, frame pairing, a data set, and a writer.

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
"""

import os
import re

import cv2
import numpy as np
import torch

from ..runtime.camera_geometry import scale_intrinsics
from .rgbd_labels import clean_depth, make_sample, worker_id

TUM_DEPTH_FACTOR = 5000.0
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


# ----------------------------------------------------------------------------- folders
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
            rng = np.random.default_rng([self.seed, index, self._draws, worker_id()])
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
        depth = clean_depth(depth)
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
    from .raycast import intrinsics_for
    from .synthetic import render_batch
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
