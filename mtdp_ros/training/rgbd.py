"""Fine-tuning data from your own RGB-D recordings: which data set a config asks for.

The sources, each in its module: TUM RGB-D folders (:mod:`.tum`) and rosbag2 bags
(:mod:`.rosbag_rgbd`); the labels a depth camera supervises (:mod:`.rgbd_labels`); the
fine-tuning itself and its evaluation (:mod:`.finetune`). This module builds the data set
of a training config's ``data`` section and batches its samples.
"""

import glob
import os

import numpy as np

from .datasets import collate
from .rosbag_rgbd import RosbagRGBD
from .tum import TUMRGBD


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
