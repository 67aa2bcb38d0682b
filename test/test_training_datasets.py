"""NYUD-v2 and PASCAL-Context loaders on tiny fixtures in the tarballs' layout."""

import os
import random
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from mtdp_ros.training.datasets import (
    build_dataset, collate, edges_from_labels, NYUDMultiTask, PascalContextMultiTask,
    read_label_png, thin, TrainTransform)
from mtdp_ros.training.matfile import loadmat, MatFileError, savemat

H, W = 24, 32


def write_indexed_png(path, indices, palette):
    """An 8-bit palette PNG (what PIL writes for VOC labels), encoded by hand."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + \
            struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    height, width = indices.shape
    raw = b''.join(b'\0' + row.astype(np.uint8).tobytes() for row in indices)
    png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 3,
                                                            0, 0, 0))
    png += chunk(b'PLTE', palette.astype(np.uint8).tobytes())
    png += chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
    with open(path, 'wb') as handle:
        handle.write(png)


def voc_palette():
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def rgb_write(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope='module')
def nyud_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('NYUDv2'))
    rng = np.random.default_rng(0)
    truth = {}
    for name in ('0001', '0002', '0003'):
        image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        seg = rng.integers(0, 41, (H, W)).astype(np.uint8)          # 0 = unlabelled
        depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
        depth[0, 0] = 0.0
        normals = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        edge = (rng.random((H, W)) < 0.1).astype(np.uint8) * 255
        rgb_write(os.path.join(root, 'images', name + '.png'), image)
        os.makedirs(os.path.join(root, 'segmentation'), exist_ok=True)
        cv2.imwrite(os.path.join(root, 'segmentation', name + '.png'), seg)
        os.makedirs(os.path.join(root, 'depth'), exist_ok=True)
        np.save(os.path.join(root, 'depth', name + '.npy'), depth)
        rgb_write(os.path.join(root, 'normals', name + '.png'), normals)
        os.makedirs(os.path.join(root, 'edge'), exist_ok=True)
        cv2.imwrite(os.path.join(root, 'edge', name + '.png'), edge)
        truth[name] = dict(image=image, seg=seg, depth=depth, normals=normals.astype(float),
                           edge=edge)
    os.makedirs(os.path.join(root, 'gt_sets'))
    for split, ids in (('train', ['0001', '0002']), ('val', ['0003'])):
        with open(os.path.join(root, 'gt_sets', split + '.txt'), 'w') as handle:
            handle.write('\n'.join(ids) + '\n')
    return root, truth


def person_anno(shape):
    head = np.zeros(shape, np.uint8)
    head[2:6, 4:8] = 1
    torso = np.zeros(shape, np.uint8)
    torso[6:14, 4:8] = 1
    lfoot = np.zeros(shape, np.uint8)
    lfoot[20:23, 4:6] = 1
    cat_mask = np.zeros(shape, np.uint8)
    cat_mask[0:5, 20:30] = 1
    person = {'class': 'person', 'class_ind': np.array([[15]], np.uint8),
              'mask': head | torso | lfoot,
              'parts': [{'part_name': 'head', 'mask': head},
                        {'part_name': 'torso', 'mask': torso},
                        {'part_name': 'lfoot', 'mask': lfoot}]}
    cat = {'class': 'cat', 'class_ind': np.array([[8]], np.uint8), 'mask': cat_mask,
           'parts': np.zeros((0, 0))}
    return {'imname': 'img', 'objects': [cat, person]}


@pytest.fixture(scope='module')
def pascal_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('PASCAL_MT'))
    rng = np.random.default_rng(1)
    names = ('2008_000001', '2008_000002')
    label_map = np.full((H, W), 440, np.uint16)            # wall (a normals class)
    label_map[:, 16:] = 284                                 # person (also a normals class)
    label_map[12:, :8] = 45                                 # bus: no trusted normals
    for index, name in enumerate(names):
        image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        rgb_write(os.path.join(root, 'JPEGImages', name + '.jpg'), image)
        seg = np.zeros((H, W), np.uint8)
        seg[:, 16:] = 15
        seg[0, :] = 255
        folder = 'VOC12' if index == 0 else 'pascal-context'
        os.makedirs(os.path.join(root, 'semseg', folder), exist_ok=True)
        if index == 0:
            write_indexed_png(os.path.join(root, 'semseg', folder, name + '.png'), seg,
                              voc_palette())
        else:
            cv2.imwrite(os.path.join(root, 'semseg', folder, name + '.png'), seg)
        os.makedirs(os.path.join(root, 'pascal-context', 'trainval'), exist_ok=True)
        savemat(os.path.join(root, 'pascal-context', 'trainval', name + '.mat'),
                {'LabelMap': label_map}, compress=index == 0)
        if index == 0:
            os.makedirs(os.path.join(root, 'human_parts'), exist_ok=True)
            savemat(os.path.join(root, 'human_parts', name + '.mat'),
                    {'anno': person_anno((H, W))})
        normals = np.full((H, W, 3), 200, np.uint8)
        rgb_write(os.path.join(root, 'normals_distill', name + '.png'), normals)
        sal = np.zeros((H, W), np.uint8)
        sal[:, 16:] = 200
        os.makedirs(os.path.join(root, 'sal_distill'), exist_ok=True)
        cv2.imwrite(os.path.join(root, 'sal_distill', name + '.png'), sal)
    os.makedirs(os.path.join(root, 'ImageSets', 'Context'))
    for split in ('train', 'val'):
        with open(os.path.join(root, 'ImageSets', 'Context', split + '.txt'), 'w') as handle:
            handle.write('\n'.join(names) + '\n')
    return root, label_map


def test_nyud_native_samples_decode_every_label(nyud_root):
    root, truth = nyud_root
    dataset = NYUDMultiTask(root, 'val')
    assert len(dataset) == 1
    sample = dataset[0]
    expected = truth['0003']
    np.testing.assert_array_equal(sample['image'], expected['image'])
    seg = expected['seg'].astype(np.int64) - 1
    seg[seg < 0] = 255
    np.testing.assert_array_equal(sample['semseg'], seg)
    np.testing.assert_array_equal(sample['depth'], expected['depth'])
    np.testing.assert_allclose(sample['normals'], 2 * expected['normals'] / 255.0 - 1.0,
                               atol=1e-6)
    np.testing.assert_array_equal(sample['edge'], expected['edge'] / 255.0)


def test_nyud_training_samples_are_tensors_of_the_model_size(nyud_root):
    root, _ = nyud_root
    dataset = build_dataset('nyud', root, 'train', ('semseg', 'depth', 'normals', 'edge'),
                            image_size=(16, 16))
    batch = collate([dataset[0], dataset[1]])
    assert batch['image'].shape == (2, 3, 16, 16) and batch['image'].dtype == torch.float32
    assert batch['semseg'].shape == (2, 1, 16, 16) and batch['semseg'].dtype == torch.long
    assert batch['depth'].shape == (2, 1, 16, 16) and batch['normals'].shape == (2, 3, 16, 16)
    assert batch['edge'].shape == (2, 1, 16, 16)
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0


def test_flip_and_scale_keep_labels_consistent():
    rng = np.random.default_rng(2)
    sample = {'name': 'x', 'image': rng.integers(0, 255, (20, 20, 3), dtype=np.uint8),
              'semseg': np.tile(np.arange(20), (20, 1)).astype(np.int64),
              'depth': np.full((20, 20), 2.0, np.float32),
              'normals': np.tile(np.array([0.6, 0.0, 0.8], np.float32), (20, 20, 1))}
    flips = 0
    for seed in range(12):
        out = TrainTransform((20, 20), augment=True, rng=random.Random(seed))(sample)
        valid = out['depth'][0] > 0
        seg = out['semseg'][0]
        columns = seg[valid.nonzero()[:, 0][0]]
        columns = columns[columns != 255]
        flipped = bool(columns[0] > columns[-1]) if len(columns) > 1 else False
        flips += flipped
        normal_x = out['normals'][0][valid]
        assert torch.allclose(normal_x, torch.tensor(-0.6 if flipped else 0.6))
        # Depth is divided by the zoom: values stay 2 / scale for scale in [0.5, 2].
        assert 1.0 - 1e-5 <= out['depth'][0][valid].min() <= 4.0 + 1e-5
        assert (out['normals'][:, ~valid] == 0).all() and (seg[~valid] == 255).all()
    assert 0 < flips < 12


def test_pascal_samples_decode_every_label(pascal_root):
    root, label_map = pascal_root
    dataset = PascalContextMultiTask(root, 'val')
    first, second = dataset[0], dataset[1]
    expected_seg = np.zeros((H, W), np.int64)
    expected_seg[:, 16:] = 15
    expected_seg[0, :] = 255
    np.testing.assert_array_equal(first['semseg'], expected_seg)    # palette PNG
    np.testing.assert_array_equal(second['semseg'], expected_seg)   # grey PNG
    parts = first['human_parts']
    assert parts[3, 5] == 1 and parts[8, 5] == 2 and parts[21, 4] == 6
    assert parts[2, 25] == 0 and parts[23, 31] == 0
    assert (second['human_parts'] == 255).all()                     # nobody annotated
    np.testing.assert_array_equal(first['sal'], (np.arange(W) >= 16)[None].repeat(H, 0))
    kept = label_map != 45
    np.testing.assert_allclose(first['normals'][kept], 2 * 200 / 255.0 - 1, atol=1e-6)
    assert (first['normals'][~kept] == 0).all()
    np.testing.assert_array_equal(first['edge'], edges_from_labels(label_map))
    assert first['edge'][:, 15:17].any() and first['edge'][:, :14].sum() > 0


def test_pascal_human_parts_alone_keeps_only_annotated_images(pascal_root):
    root, _ = pascal_root
    assert len(PascalContextMultiTask(root, 'val', tasks=('human_parts',))) == 1


def test_label_boundaries_become_one_pixel_edges():
    labels = np.zeros((12, 12), np.int32)
    labels[:, 6:] = 3
    edges = edges_from_labels(labels)
    assert edges.sum() == 12 and set(np.nonzero(edges)[1]) <= {5, 6}
    band = np.zeros((9, 12), bool)
    band[3:6, :] = True                      # three pixels thick, running out of the image
    skeleton = thin(band)
    assert skeleton[4].all() and skeleton.sum() == 12


def test_label_png_palette_indices(tmp_path):
    indices = np.array([[0, 1, 2], [15, 255, 7]], np.uint8)
    path = str(tmp_path / 'p.png')
    write_indexed_png(path, indices, voc_palette())
    np.testing.assert_array_equal(read_label_png(path), indices)


def test_mat_files_round_trip(tmp_path):
    path = str(tmp_path / 'a.mat')
    values = {'M': np.arange(6, dtype=np.uint16).reshape(2, 3), 'text': 'hello',
              'flag': np.array([[True, False]]),
              'record': {'x': np.array([[1.5]]), 'items': [{'n': 'a'}, {'n': 'b'}]}}
    for compress in (True, False):
        savemat(path, values, compress=compress)
        loaded = loadmat(path)
        np.testing.assert_array_equal(loaded['M'], values['M'])
        assert loaded['M'].dtype == np.uint16 and loaded['text'] == 'hello'
        assert loaded['flag'].dtype == bool
        record = loaded['record'][0, 0]
        assert record['x'][0, 0] == 1.5
        assert [item['n'] for item in record['items'].flat] == ['a', 'b']
    with open(path, 'wb') as handle:
        handle.write(b'not a mat file' * 20)
    with pytest.raises(MatFileError, match='not a level-5'):
        loadmat(path)


def test_missing_files_are_named(tmp_path, nyud_root):
    with pytest.raises(FileNotFoundError, match='dataset folder'):
        NYUDMultiTask(str(tmp_path / 'absent'))
    root, _ = nyud_root
    with pytest.raises(FileNotFoundError, match='test.txt'):
        NYUDMultiTask(root, 'test')
    with pytest.raises(ValueError, match='no labels'):
        NYUDMultiTask(root, 'val', tasks=('sal',))


def test_evaluation_on_a_dataset_scores_at_the_labels_resolution(nyud_root):
    from mtdp_ros.models import build_model
    from mtdp_ros.training.evaluate import evaluate_model, summarize
    from mtdp_ros.training.train import model_config_from
    root, truth = nyud_root
    config, _ = model_config_from({'base': 'default_mlore', 'image_size': [32, 48],
                                   'embed_dim': 32, 'depth': 3, 'num_heads': 2,
                                   'select_layers': [1, 2, 3], 'decoder_dim': 16})
    torch.manual_seed(0)
    results = evaluate_model(build_model(config), f'nyud:{root}', num=None, device='cpu')
    # The one validation image is 24 x 32 with one pixel of invalid depth.
    assert results['depth']['valid_pixels'] == H * W - 1
    present = set(np.unique(truth['0003']['seg'])) - {0}
    assert set(results['semseg']['per_class_IoU']) == {c - 1 for c in present}
    assert set(summarize(results)) == {'semseg', 'depth', 'normals', 'edge'}
