"""NYUD-v2 and PASCAL-Context in the layout of the widely used multi-task tarballs.

NYUD-v2 (``NYUDv2/``, as MTI-Net / ATRC / MLoRE use it)::

    images/<id>.png          RGB image
    segmentation/<id>.png    40-class labels stored 1..40 (0 = unlabelled -> ignore 255)
    depth/<id>.npy           float32 metres (0 = no measurement)
    normals/<id>.png         RGB = (n + 1) / 2 * 255 (camera frame)
    edge/<id>.png            0 / 255
    gt_sets/{train,val}.txt  image ids

PASCAL-Context (``PASCAL_MT/``)::

    JPEGImages/<id>.jpg
    ImageSets/Context/{train,val}.txt
    semseg/VOC12/<id>.png or semseg/pascal-context/<id>.png   21 classes, 255 ignore
    pascal-context/trainval/<id>.mat   ``LabelMap`` (459 context classes): edges are its
                                       label boundaries, thinned to one pixel
    human_parts/<id>.mat               PASCAL-Part ``anno``; the person's parts grouped
                                       into 6 parts (+ background)
    normals_distill/<id>.png           distilled normals, kept on indoor-like classes only
    sal_distill/<id>.png               distilled saliency (> 0.5 -> salient)

Samples without ``image_size`` come at native resolution as NumPy arrays (image uint8
H x W x 3, semseg/human_parts/sal int64 H x W, depth float32 H x W, normals float32
H x W x 3, edge float32 H x W). With ``image_size`` (training) they come as tensors in the
model's target format after the papers' augmentations (random scaling 0.5-2, random crop
with at most 75 % of one class, horizontal flip, photometric distortion, padding).
"""

import os
import random
import struct

import cv2
import numpy as np
import torch

from ..models.tasks import get_task
from ..runtime.preprocess import plan_letterbox
from .matfile import loadmat

IGNORE_INDEX = 255
# The person's parts grouped into 6 parts (head, torso, upper arms, lower arms + hands,
# upper legs, lower legs + feet), the grouping of the multi-task PASCAL benchmark.
HUMAN_PARTS_6 = {
    'hair': 1, 'head': 1, 'lear': 1, 'lebrow': 1, 'leye': 1, 'mouth': 1, 'nose': 1,
    'rear': 1, 'rebrow': 1, 'reye': 1, 'neck': 2, 'torso': 2, 'luarm': 3, 'ruarm': 3,
    'lhand': 4, 'llarm': 4, 'rhand': 4, 'rlarm': 4, 'luleg': 5, 'ruleg': 5,
    'lfoot': 6, 'llleg': 6, 'rfoot': 6, 'rlleg': 6,
}
PERSON_CLASS = 15          # PASCAL VOC class index of 'person' in PASCAL-Part annotations
# PASCAL-Context classes (1-based LabelMap ids) whose names are also NYUD-v2 classes, plus
# 'tvmonitor': the distilled normals are only trusted on these (indoor-like) surfaces.
PASCAL_NORMALS_CLASSES = frozenset([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46,
    49, 50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95,
    96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157,
    158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216,
    219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255,
    260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292,
    293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349,
    350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405,
    407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442,
    443, 444, 446, 454, 457])
NYUD_TASKS = ('semseg', 'depth', 'normals', 'edge')
PASCAL_TASKS = ('semseg', 'human_parts', 'sal', 'normals', 'edge')


# ----------------------------------------------------------------------------- file readers
def _require(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f'dataset file missing: {path}')
    return path


def read_rgb(path):
    image = cv2.imread(_require(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'cannot decode image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _png_palette(path):
    """The PLTE colours (N x 3 RGB) of an indexed PNG, or None for other PNGs."""
    with open(path, 'rb') as handle:
        data = handle.read()
    if data[:8] != b'\x89PNG\r\n\x1a\n' or data[25] != 3:
        return None
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[offset:offset + 8])
        if kind == b'PLTE':
            raw = np.frombuffer(data[offset + 8:offset + 8 + length], np.uint8)
            return raw.reshape(-1, 3)
        offset += 12 + length
    raise ValueError(f'{path}: indexed PNG without a palette')


def read_label_png(path):
    """Label image as integers.

    Palette indices for indexed PNGs (as PIL reads them), grey values otherwise.
    """
    palette = _png_palette(_require(path))
    if palette is None:
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if label is None:
            raise ValueError(f'cannot decode label image {path}')
        return label if label.ndim == 2 else label[..., 0]
    # OpenCV expands indexed PNGs to colours: map each colour back to its palette index.
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int64)
    codes = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8) \
        | palette[:, 2]
    order = np.argsort(codes, kind='stable')
    pixel_codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    found = np.searchsorted(codes[order], pixel_codes)
    found = np.clip(found, 0, len(codes) - 1)
    if not np.all(codes[order][found] == pixel_codes):
        raise ValueError(f'{path}: pixel colours outside the palette')
    return order[found].astype(np.int64)


def thin(mask):
    """One-pixel-wide skeleton of a binary mask (Zhang-Suen thinning, vectorised)."""
    # Replicated borders: a line running out of the image keeps its last pixel.
    image = np.pad(mask.astype(np.uint8), 1, mode='edge')
    while True:
        changed = False
        for step in (0, 1):
            p = image
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:],          # P2..P9 clockwise
                 p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            count = sum(x.astype(np.int32) for x in n)
            ring = n + [n[0]]
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.int32)
                              for i in range(8))
            if step == 0:
                cond = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                cond = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            remove = (p[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & \
                (transitions == 1) & cond
            if remove.any():
                image[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return image[1:-1, 1:-1].astype(bool)


def edges_from_labels(label_map):
    """PASCAL-Context edges: non-zero Laplacian of the label map, thinned to 1 pixel."""
    laplacian = cv2.Laplacian(np.asarray(label_map, dtype=np.float64), cv2.CV_64F)
    return thin(np.abs(laplacian) > 0).astype(np.float32)


def _field(record, name, position):
    """A struct field by name, falling back to its position (files differ in names)."""
    if name in record:
        return record[name]
    return list(record.values())[position]


def _scalar(value):
    return int(np.asarray(value).reshape(-1)[0])


def human_parts_from_anno(anno, shape=None):
    """Part labels (0 = background, 1..6) of every annotated person, or None without any.

    ``shape`` defaults to the size of the part masks.
    """
    record = anno.flat[0] if isinstance(anno, np.ndarray) else anno
    objects = np.asarray(_field(record, 'objects', 1), dtype=object).reshape(-1)
    target = None
    for obj in objects:
        parts = _field(obj, 'parts', 3)
        if _scalar(_field(obj, 'class_ind', 1)) != PERSON_CLASS or \
                not isinstance(parts, np.ndarray) or parts.size == 0:
            continue
        for part in np.asarray(parts, dtype=object).reshape(-1):
            name = str(_field(part, 'part_name', 0))
            if name not in HUMAN_PARTS_6:
                raise ValueError(f'unknown human part {name!r}')
            mask = np.asarray(_field(part, 'mask', 1)).astype(bool)
            if target is None:
                target = np.zeros(shape or mask.shape, dtype=np.int64)
            target[mask] = HUMAN_PARTS_6[name]
    return target


def _read_split(path):
    with open(_require(path), 'r', encoding='utf-8') as handle:
        ids = [line.strip() for line in handle if line.strip()]
    if not ids:
        raise ValueError(f'split file {path} lists no images')
    return ids


# ----------------------------------------------------------------------------- data sets
class _MultiTaskDataset(torch.utils.data.Dataset):
    TASKS = ()

    def __init__(self, root, split, tasks, image_size=None, augment=True):
        if not os.path.isdir(root):
            raise FileNotFoundError(f'dataset folder not found: {root}')
        unknown = [t for t in tasks if t not in self.TASKS]
        if unknown:
            raise ValueError(f'{type(self).__name__} has no labels for {unknown}; '
                             f'it has {list(self.TASKS)}')
        self.root, self.split, self.tasks = root, split, tuple(tasks)
        self.image_size = tuple(image_size) if image_size else None
        self.augment = augment and self.image_size is not None
        self.transform = TrainTransform(self.image_size, self.augment) \
            if self.image_size else None

    def __getitem__(self, index):
        sample = self.load(index)
        if self.transform is not None:
            return self.transform(sample)
        return sample


class NYUDMultiTask(_MultiTaskDataset):
    """NYUD-v2 of the multi-task tarball (semseg, depth, normals, edge)."""

    TASKS = NYUD_TASKS

    def __init__(self, root, split='val', tasks=NYUD_TASKS, image_size=None, augment=True):
        super().__init__(root, split, tasks, image_size, augment)
        self.ids = _read_split(os.path.join(root, 'gt_sets', f'{split}.txt'))

    def __len__(self):
        return len(self.ids)

    def load(self, index):
        """Native-size NumPy sample ``index`` (see the module docstring)."""
        name = self.ids[index]
        root = self.root
        sample = {'name': name, 'image': read_rgb(os.path.join(root, 'images', name + '.png'))}
        if 'semseg' in self.tasks:
            label = read_label_png(os.path.join(root, 'segmentation', name + '.png'))
            label = label.astype(np.int64) - 1
            label[label < 0] = IGNORE_INDEX
            sample['semseg'] = label
        if 'depth' in self.tasks:
            depth = np.load(_require(os.path.join(root, 'depth', name + '.npy')))
            sample['depth'] = np.asarray(depth, dtype=np.float32).reshape(depth.shape[:2])
        if 'normals' in self.tasks:
            normals = read_rgb(os.path.join(root, 'normals', name + '.png'))
            sample['normals'] = 2.0 * normals.astype(np.float32) / 255.0 - 1.0
        if 'edge' in self.tasks:
            edge = read_label_png(os.path.join(root, 'edge', name + '.png'))
            sample['edge'] = (edge.astype(np.float32) / 255.0).round()
        return _resize_labels_to_image(sample)


class PascalContextMultiTask(_MultiTaskDataset):
    """PASCAL-Context of the multi-task tarball (semseg, human_parts, sal, normals, edge)."""

    TASKS = PASCAL_TASKS

    def __init__(self, root, split='val', tasks=PASCAL_TASKS, image_size=None, augment=True):
        super().__init__(root, split, tasks, image_size, augment)
        self.ids = _read_split(os.path.join(root, 'ImageSets', 'Context', f'{split}.txt'))
        if self.tasks == ('human_parts',):
            # Trained alone, human parts only use images with an annotated person.
            self.ids = [i for i in self.ids if self._parts(i) is not None]

    def __len__(self):
        return len(self.ids)

    def _parts(self, name, shape=None):
        path = os.path.join(self.root, 'human_parts', name + '.mat')
        if not os.path.isfile(path):
            return None
        return human_parts_from_anno(loadmat(path)['anno'], shape)

    def _label_map(self, name):
        path = os.path.join(self.root, 'pascal-context', 'trainval', name + '.mat')
        return loadmat(_require(path))['LabelMap']

    def load(self, index):
        """Native-size NumPy sample ``index`` (see the module docstring)."""
        name = self.ids[index]
        root = self.root
        image = read_rgb(os.path.join(root, 'JPEGImages', name + '.jpg'))
        shape = image.shape[:2]
        sample = {'name': name, 'image': image}
        label_map = None
        if 'edge' in self.tasks or 'normals' in self.tasks:
            label_map = self._label_map(name)
        if 'semseg' in self.tasks:
            for folder in ('VOC12', 'pascal-context'):
                path = os.path.join(root, 'semseg', folder, name + '.png')
                if os.path.isfile(path):
                    sample['semseg'] = read_label_png(path).astype(np.int64)
                    break
            else:
                raise FileNotFoundError(f'no segmentation for {name} in {root}/semseg')
        if 'human_parts' in self.tasks:
            parts = self._parts(name, shape)
            # Images without annotated people are ignored for this task.
            sample['human_parts'] = parts if parts is not None else \
                np.full(shape, IGNORE_INDEX, dtype=np.int64)
        if 'sal' in self.tasks:
            sal = read_label_png(os.path.join(root, 'sal_distill', name + '.png'))
            sample['sal'] = (sal.astype(np.float32) / 255.0 > 0.5).astype(np.int64)
        if 'normals' in self.tasks:
            normals = read_rgb(os.path.join(root, 'normals_distill', name + '.png'))
            normals = 2.0 * normals.astype(np.float32) / 255.0 - 1.0
            keep = np.isin(label_map, list(PASCAL_NORMALS_CLASSES))
            sample['normals'] = np.where(keep[..., None], normals, 0.0).astype(np.float32)
        if 'edge' in self.tasks:
            sample['edge'] = edges_from_labels(label_map)
        return _resize_labels_to_image(sample)


def _resize_labels_to_image(sample):
    """Labels of another size than the image are resized to it (nearest / cubic)."""
    height, width = sample['image'].shape[:2]
    for key, value in list(sample.items()):
        if key in ('name', 'image') or value.shape[:2] == (height, width):
            continue
        mode = cv2.INTER_CUBIC if get_task(key).target == 'vector' else cv2.INTER_NEAREST
        sample[key] = cv2.resize(value, (width, height), interpolation=mode)
    return sample


# ----------------------------------------------------------------------------- augmentation
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)


class TrainTransform:
    """The papers' training augmentation (ATRC/MLoRE/TaskDiffusion), then tensors.

    Random scaling by [0.5, 2] (depth divided by the scale: a nearer camera), a random
    crop of ``size`` retried up to 10 times while one class covers more than 75 % of it,
    horizontal flip (normals' x negated), photometric distortion (brightness +-32,
    contrast and saturation 0.5-1.5, hue +-18, each with probability 0.5), padding to
    ``size`` (image with the mean colour, i.e. 0 after normalisation; labels ignored).
    Without ``augment`` the sample is only letterboxed to ``size``.
    """

    def __init__(self, size, augment=True, rng=None):
        self.size = tuple(size)
        self.augment = augment
        self.rng = rng or random.Random()

    def __call__(self, sample):
        """Augmented (or letterboxed) tensors of a native-size NumPy sample."""
        sample = dict(sample)
        if self.augment:
            sample = self._scale(sample, self.rng.uniform(0.5, 2.0))
            sample = self._crop(sample)
            if self.rng.random() < 0.5:
                sample = {k: (v if k == 'name' else np.ascontiguousarray(v[:, ::-1]))
                          for k, v in sample.items()}
                for key in sample:
                    if key not in ('name', 'image') and get_task(key).kind == 'normals':
                        # A mirrored surface faces the other way along x.
                        sample[key] = sample[key].copy()
                        sample[key][..., 0] *= -1
            sample['image'] = photometric_distortion(sample['image'], self.rng)
        else:
            # The runtime's letterbox: the size the engines scale a camera image to.
            plan = plan_letterbox(sample['image'].shape[:2], self.size)
            scale = min(self.size[0] / plan.image_size[0], self.size[1] / plan.image_size[1])
            sample = self._scale(sample, scale, plan.resized_size)
        sample = self._pad(sample)
        return to_tensors(sample)

    @staticmethod
    def _scale(sample, scale, resized_size=None):
        """``sample`` resized by ``scale`` (to ``resized_size`` (h, w) when given)."""
        if abs(scale - 1.0) < 1e-6:
            return sample
        height, width = sample['image'].shape[:2]
        if resized_size is not None:
            new = (int(resized_size[1]), int(resized_size[0]))
        else:
            new = (max(1, int(width * scale)), max(1, int(height * scale)))
        out = {}
        for key, value in sample.items():
            if key == 'name':
                out[key] = value
                continue
            mode = cv2.INTER_LINEAR if key == 'image' else cv2.INTER_NEAREST
            resized = cv2.resize(value, new, interpolation=mode)
            # A nearer camera: depth shrinks by the scale.
            is_depth = key != 'image' and get_task(key).kind == 'depth'
            out[key] = resized / scale if is_depth else resized
        return out

    def _crop(self, sample):
        height, width = sample['image'].shape[:2]
        crop_h, crop_w = self.size

        def location():
            return (self.rng.randint(0, max(height - crop_h, 0)),
                    self.rng.randint(0, max(width - crop_w, 0)))

        top, left = location()
        if 'semseg' in sample:
            for _ in range(10):
                patch = sample['semseg'][top:top + crop_h, left:left + crop_w]
                _, counts = np.unique(patch[patch != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
                    break
                top, left = location()
        return {k: (v if k == 'name' else v[top:top + crop_h, left:left + crop_w])
                for k, v in sample.items()}

    def _pad(self, sample):
        height, width = sample['image'].shape[:2]
        target_h, target_w = self.size
        if (height, width) == (target_h, target_w):
            return sample
        top, left = (target_h - height) // 2, (target_w - width) // 2
        out = {}
        for key, value in sample.items():
            if key == 'name':
                out[key] = value
                continue
            fill = IMAGENET_MEAN_255 if key == 'image' else get_task(key).target_fill
            shape = (target_h, target_w) + value.shape[2:]
            canvas = np.empty(shape, dtype=value.dtype)
            canvas[...] = np.asarray(fill, dtype=np.float64).astype(value.dtype)
            canvas[top:top + height, left:left + width] = value
            out[key] = canvas
        return out


def photometric_distortion(image, rng):
    """Random brightness, contrast, saturation and hue (uint8 RGB in and out)."""
    image = np.asarray(image, dtype=np.uint8)

    def convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.random() < 0.5:
        image = convert(image, beta=rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(-18, 17)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.random() < 0.5:
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    return image


def to_tensors(sample):
    """Convert a NumPy sample to tensors in the model's target format (image in [0, 1])."""
    out = {'name': sample.get('name', '')}
    for key, value in sample.items():
        if key == 'name':
            continue
        if key == 'image':
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).permute(2, 0, 1).float() \
                / 255.0
        elif get_task(key).target == 'vector':
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) \
                .permute(2, 0, 1)
        elif get_task(key).target == 'scalar':
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))[None]
        else:                                                  # classes
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64))[None]
    return out


def collate(samples):
    """Stack tensor samples (any keys: tasks, image, intrinsics...); names as a list."""
    batch = {'name': [s['name'] for s in samples]}
    for key in samples[0]:
        if key != 'name':
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


DATASETS = {'nyud': NYUDMultiTask, 'pascal': PascalContextMultiTask}


def build_dataset(kind, root, split, tasks, image_size=None, augment=True):
    """``kind`` 'nyud' | 'pascal'; ``image_size`` None gives native-size NumPy samples."""
    if kind not in DATASETS:
        raise ValueError(f'unknown dataset {kind!r}; use one of {sorted(DATASETS)}')
    return DATASETS[kind](root, split, tasks, image_size=image_size, augment=augment)


def write_split(path, ids):
    """Write a split list (one id per line)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write('\n'.join(ids) + '\n')


__all__ = ['NYUDMultiTask', 'PascalContextMultiTask', 'TrainTransform', 'build_dataset',
           'collate', 'edges_from_labels', 'human_parts_from_anno', 'read_label_png',
           'thin', 'write_split']
