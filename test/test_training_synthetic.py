"""Synthetic scenes: determinism, and labels that agree with the scene geometry."""

import math

import numpy as np
import pytest
import torch

from mtdp_ros.training import scene_sampling, synthetic
from mtdp_ros.training.scene_sampling import (FOCAL_PER_WIDTH, ROOM_SURFACES, sample_scene,
                                              SCENE_CLASSES)
from mtdp_ros.training.synthetic import render_batch, render_scene

H, W = 60, 80
SEEDS = (0, 5, 17)


@pytest.fixture(scope='module')
def scenes():
    return {seed: render_scene(seed, H, W) for seed in SEEDS}


def world_points(scene):
    """Back-project every pixel with the returned intrinsics, depth and pose."""
    fx, fy, cx, cy = scene['intrinsics']
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = scene['depth'].astype(np.float64)
    cam = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    pose = scene['camera_to_world'].astype(np.float64)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def assert_rows(rows, expected, atol=1e-5):
    np.testing.assert_allclose(rows, np.broadcast_to(expected, rows.shape), atol=atol)


def test_same_seed_same_scene_other_seed_other_scene(scenes):
    again = render_scene(5, H, W)
    for key in ('image', 'semseg', 'depth', 'normals', 'edge', 'instance'):
        np.testing.assert_array_equal(again[key], scenes[5][key], err_msg=key)
    assert not np.array_equal(scenes[0]['image'], scenes[5]['image'])
    assert not np.array_equal(scenes[0]['depth'], scenes[5]['depth'])


def test_outputs_have_the_documented_types_and_ranges(scenes):
    for scene in scenes.values():
        assert scene['image'].shape == (H, W, 3) and scene['image'].dtype == np.uint8
        assert scene['semseg'].dtype == np.uint8 and scene['edge'].dtype == np.uint8
        assert scene['depth'].dtype == np.float32 and scene['normals'].dtype == np.float32
        assert set(np.unique(scene['semseg'])) <= set(SCENE_CLASSES)
        assert set(np.unique(scene['edge'])) <= {0, 1}
        assert np.isfinite(scene['depth']).all()
        assert 0.1 < scene['depth'].min() and scene['depth'].max() < 15.0
        np.testing.assert_allclose(np.linalg.norm(scene['normals'], axis=-1), 1.0, atol=1e-4)
        fx, fy, cx, cy = scene['intrinsics']
        assert fx == pytest.approx(FOCAL_PER_WIDTH * W) and fy == fx
        assert (cx, cy) == ((W - 1) / 2, (H - 1) / 2)
        assert scene['image'].std() > 10          # a picture, not a flat colour


def test_normals_face_the_camera(scenes):
    for scene in scenes.values():
        fx, fy, cx, cy = scene['intrinsics']
        v, u = np.mgrid[0:H, 0:W]
        rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((H, W))], -1)
        assert ((scene['normals'] * rays).sum(-1) < 0).all()


def test_depth_and_normals_agree_with_the_room_geometry(scenes):
    for seed, scene in scenes.items():
        params = sample_scene(seed)
        size_x, height, size_z = params['room'].astype(np.float64)
        points = world_points(scene)
        rotation = scene['camera_to_world'][:3, :3].astype(np.float64)
        normals_world = scene['normals'].astype(np.float64) @ rotation.T
        instance = scene['instance']
        # Floor (surface 0) lies in y = 0 with normal +y; ceiling (1) at the room height.
        floor, ceiling = instance == 0, instance == 1
        assert floor.any()
        np.testing.assert_allclose(points[floor][:, 1], 0.0, atol=2e-3)
        assert_rows(normals_world[floor], [0, 1, 0])
        if ceiling.any():
            np.testing.assert_allclose(points[ceiling][:, 1], height, atol=2e-3)
            assert_rows(normals_world[ceiling], [0, -1, 0])
        for surface, axis, value, normal in ((2, 0, 0.0, [1, 0, 0]),
                                             (3, 0, size_x, [-1, 0, 0]),
                                             (4, 2, 0.0, [0, 0, 1]),
                                             (5, 2, size_z, [0, 0, -1])):
            wall = instance == surface
            if wall.any():
                np.testing.assert_allclose(points[wall][:, axis], value, atol=2e-3)
                assert_rows(normals_world[wall], normal)
        # Everything seen lies inside the room.
        assert (points[..., 0] > -1e-3).all() and (points[..., 0] < size_x + 1e-3).all()
        assert (points[..., 1] > -1e-3).all() and (points[..., 1] < height + 1e-3).all()


def test_depth_and_normals_agree_with_spheres_and_cylinders():
    checked = 0
    for seed in range(40):
        params = sample_scene(seed)
        if not len(params['sphere_yaw']) and not len(params['cylinder_yaw']):
            continue
        scene = render_scene(seed, H, W)
        points = world_points(scene)
        normals_world = scene['normals'].astype(np.float64) @ \
            scene['camera_to_world'][:3, :3].astype(np.float64).T
        first = ROOM_SURFACES + len(params['box_yaw'])
        for k, (centre, half) in enumerate(zip(params['sphere_centre'], params['sphere_half'])):
            mask = scene['instance'] == first + k
            if mask.sum() < 3:
                continue
            offset = points[mask] - centre
            np.testing.assert_allclose(np.linalg.norm(offset, axis=1), half[0], atol=3e-3)
            np.testing.assert_allclose(normals_world[mask], offset / half[0], atol=1e-2)
            checked += 1
        first += len(params['sphere_yaw'])
        for k, (centre, half) in enumerate(zip(params['cylinder_centre'],
                                               params['cylinder_half'])):
            mask = scene['instance'] == first + k
            if mask.sum() < 3:
                continue
            offset = points[mask] - centre
            radial = np.hypot(offset[:, 0], offset[:, 2])
            side = np.abs(normals_world[mask][:, 1]) < 0.5
            np.testing.assert_allclose(radial[side], half[0], atol=3e-3)
            assert (np.abs(offset[:, 1]) <= half[1] + 3e-3).all()
            np.testing.assert_allclose(np.abs(offset[~side, 1]), half[1], atol=3e-3)
            checked += 1
        if checked >= 4:
            break
    assert checked >= 4


def test_semantic_classes_follow_the_surfaces(scenes):
    for seed, scene in scenes.items():
        params = sample_scene(seed)
        classes = params['surfaces'][:, 0].astype(int)
        np.testing.assert_array_equal(scene['semseg'], classes[scene['instance']])
        assert (scene['semseg'][scene['instance'] == 0] == scene_sampling.FLOOR).all()
        assert (scene['semseg'][np.isin(scene['instance'], [2, 3, 4, 5])]
                == scene_sampling.WALL).all()


def test_edges_lie_exactly_on_surface_changes_and_depth_jumps(scenes):
    for scene in scenes.values():
        instance, depth, edge = scene['instance'], scene['depth'], scene['edge'].astype(bool)
        right = np.zeros_like(edge)
        down = np.zeros_like(edge)
        right[:, :-1] = (instance[:, :-1] != instance[:, 1:]) | \
            (np.abs(depth[:, :-1] - depth[:, 1:]) > 0.05 * np.minimum(depth[:, :-1],
                                                                      depth[:, 1:]))
        down[:-1] = (instance[:-1] != instance[1:]) | \
            (np.abs(depth[:-1] - depth[1:]) > 0.05 * np.minimum(depth[:-1], depth[1:]))
        np.testing.assert_array_equal(edge, right | down)
        # Every semantic boundary is marked, and edges are a small part of the image.
        semantic_change = scene['semseg'][:, :-1] != scene['semseg'][:, 1:]
        assert edge[:, :-1][semantic_change].all()
        assert 0.003 < edge.mean() < 0.2


def test_batch_rendering_equals_single_scenes():
    batch = render_batch([5, 17], H, W)
    assert batch['image'].shape == (2, 3, H, W) and batch['image'].dtype == torch.float32
    assert batch['semseg'].shape == (2, 1, H, W) and batch['semseg'].dtype == torch.long
    assert batch['depth'].shape == (2, 1, H, W) and batch['normals'].shape == (2, 3, H, W)
    assert batch['edge'].shape == (2, 1, H, W) and batch['intrinsics'].shape == (2, 4)
    for index, seed in enumerate((5, 17)):
        single = render_scene(seed, H, W)
        image = (batch['image'][index].permute(1, 2, 0) * 255).round().byte().numpy()
        np.testing.assert_array_equal(image, single['image'])
        np.testing.assert_array_equal(batch['semseg'][index, 0].numpy(), single['semseg'])
        np.testing.assert_allclose(batch['depth'][index, 0].numpy(), single['depth'], atol=1e-5)


def test_any_resolution_shows_the_same_scene():
    low = render_scene(17, 45, 60)
    high = render_scene(17, 90, 120)
    # Low-res pixel (u, v) looks along high-res coordinate (2u + 0.5, 2v + 0.5).
    agree = (high['semseg'][::2, ::2] == low['semseg']).mean()
    assert agree > 0.93
    ratio = high['depth'][::2, ::2] / low['depth']
    assert np.median(np.abs(ratio - 1)) < 0.02
    assert math.isclose(high['intrinsics'][0], 2 * low['intrinsics'][0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='non-negative'):
        render_scene(-1, H, W)
    with pytest.raises(ValueError, match='height'):
        render_scene(1, 1, W)
    with pytest.raises(ValueError, match='at least one seed'):
        render_batch([], H, W)


def test_stream_seeds_are_disjoint_across_ranks_and_below_the_held_out_range():
    streams = [synthetic.SyntheticStream(4, 16, 16, start=0, stop=400000, rank=r, world_size=2)
               for r in range(2)]
    seen = [set(s for step in range(5) for s in stream.seeds_for(step)) for stream in streams]
    assert not seen[0] & seen[1]
    assert max(seen[0] | seen[1]) < 400000
    batch = next(iter(synthetic.SyntheticStream(2, 16, 32, workers=0)))
    assert batch['image'].shape == (2, 3, 16, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_rendering_matches_the_cpu():
    cpu = render_batch([3, 4], H, W, device='cpu')
    gpu = render_batch([3, 4], H, W, device='cuda')
    assert (gpu['semseg'].cpu() == cpu['semseg']).float().mean() > 0.999
    torch.testing.assert_close(gpu['depth'].cpu(), cpu['depth'], atol=1e-3, rtol=1e-3)
