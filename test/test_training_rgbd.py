"""Fine-tuning on RGB-D recordings: TUM folders, rosbag2 bags, derived labels, the loop."""

import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from mtdp_ros.models import build_model, load_checkpoint, resolve_model
from mtdp_ros.training.config import load_config
from mtdp_ros.training.losses import distillation_loss
from mtdp_ros.training.finetune import evaluate_rgbd, FineTune
from mtdp_ros.training.rgbd_labels import (depth_edges, IGNORE_INDEX, make_sample,
                                           normals_from_depth)
from mtdp_ros.training.rosbag_rgbd import depth_from_msg, read_bag_frames
from mtdp_ros.training.tum import (associate, export_synthetic_tum, load_camera,
                                   read_associations, read_depth_png, TUM_CAMERAS, tum_frames,
                                   TUMRGBD, write_tum_folder)
from mtdp_ros.training.synthetic import render_scene
from mtdp_ros.training.train import Trainer

TINY = {'base': 'default_mlore', 'image_size': [32, 48], 'embed_dim': 32, 'depth': 3,
        'num_heads': 2, 'select_layers': [1, 2, 3], 'decoder_dim': 16}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def angles_deg(a, b):
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


# ----------------------------------------------------------------------------- labels
def test_normals_from_depth_match_the_renderers_normals():
    scene = render_scene(424250, 60, 80)
    normals = normals_from_depth(scene['depth'], scene['intrinsics'])
    valid = np.abs(normals).sum(-1) > 0
    assert valid.mean() > 0.75                    # border and depth-jump pixels ignored
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=1e-5)
    error = angles_deg(normals[valid], scene['normals'][valid])
    assert np.median(error) < 1.0 and np.percentile(error, 90) < 5.0, \
        f'median {np.median(error):.2f} deg, p90 {np.percentile(error, 90):.2f} deg'


def test_normals_of_a_tilted_plane_face_the_camera_in_the_optical_frame():
    fx, fy, cx, cy = 50.0, 50.0, 15.5, 11.5
    v, u = np.mgrid[0:24, 0:32].astype(np.float64)
    # Plane n . P = d with n facing the camera (floor-like: y down, so n_y < 0 faces up).
    normal = np.array([0.2, -0.6, -0.77])
    normal /= np.linalg.norm(normal)
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
    depth = (-2.0 / (rays @ normal)).astype(np.float32)
    assert (depth > 0).all()
    got = normals_from_depth(depth, (fx, fy, cx, cy))
    inner = got[1:-1, 1:-1]
    assert angles_deg(inner, normal[None, None].astype(np.float32)).max() < 0.05
    assert (got[0] == 0).all() and (got[:, -1] == 0).all()          # borders ignored


def test_invalid_depth_and_discontinuities_are_ignored():
    depth = np.full((10, 12), 2.0, np.float32)
    depth[:, 6:] = 3.0                            # a step: 50 % jump
    depth[2, 2] = 0.0                             # a hole
    depth[7, 9] = np.nan                          # NaN (32FC1 invalid)
    normals = normals_from_depth(depth, (20.0, 20.0, 5.5, 4.5))
    assert (normals[:, 5:7] == 0).all()           # both sides of the step
    for r, c in ((2, 2), (1, 2), (3, 2), (2, 1), (2, 3), (7, 9)):
        assert (normals[r, c] == 0).all()
    assert np.abs(normals[5, 3]).sum() > 0
    edge = depth_edges(depth)
    assert (edge[:, 5][[0, 1, 3, 4, 5, 8, 9]] == 1).all()            # step edge
    assert edge[2, 2] == IGNORE_INDEX and edge[2, 1] == IGNORE_INDEX
    assert edge[1, 2] == IGNORE_INDEX and edge[7, 9] == IGNORE_INDEX
    assert edge[5, 2] == 0 and edge[5, 8] == 0


def test_depth_edges_are_the_renderers_depth_jump_edges():
    scene = render_scene(424251, 60, 80)
    edge = depth_edges(scene['depth'])
    assert set(np.unique(edge)) <= {0.0, 1.0}      # rendered depth is valid everywhere
    assert edge.sum() > 10
    # Every depth edge is an edge of the renderer (which adds surface boundaries).
    assert (scene['edge'][edge == 1] == 1).all()


# ----------------------------------------------------------------------------- TUM folders
def test_tum_folder_round_trip_and_timestamp_association(tmp_path):
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
               rng.uniform(0.5, 6.0, (12, 16)).astype(np.float32)) for _ in range(5)]
    frames[0][1][3, 4] = 0.0
    root = tmp_path / 'rgbd_dataset_freiburg2_desk'
    assert write_tum_folder(root, frames) == 5
    depth = read_depth_png(str(root / 'depth' / '0.000000.png'))
    np.testing.assert_allclose(depth, frames[0][1], atol=0.5 / 5000 + 1e-6)
    assert depth[3, 4] == 0.0
    assert cv2.imread(str(root / 'depth' / '0.000000.png'), cv2.IMREAD_UNCHANGED).dtype \
        == np.uint16
    pairs = tum_frames(str(root))
    assert [os.path.basename(p[0]) for p in pairs] == \
        [os.path.basename(p[1]) for p in pairs]
    # Without associations.txt: nearest timestamps, depth 8 ms late, one depth frame lost.
    os.remove(root / 'associations.txt')
    lines = (root / 'depth.txt').read_text().splitlines()
    entries = [line.split() for line in lines[1:]]
    assert entries[4][1] == 'depth/0.133333.png'
    shifted = [f'{float(t) + 0.008:.6f} {p}' for t, p in entries[:4]]   # frame 4 lost
    (root / 'depth.txt').write_text('\n'.join([lines[0]] + shifted) + '\n')
    pairs = tum_frames(str(root))
    assert len(pairs) == 4
    assert all(os.path.basename(a) == os.path.basename(b) for a, b, _ in pairs)
    with pytest.raises(ValueError, match='no colour/depth pairs'):
        tum_frames(str(root), max_difference=0.001)
    assert load_camera('auto', str(root))[:4] == TUM_CAMERAS['fr2']


def test_associate_uses_each_frame_once_closest_first():
    rgb = [(1.00, 'a'), (1.03, 'b'), (1.07, 'c')]
    depth = [(1.02, 'x'), (1.08, 'y')]
    pairs = associate(rgb, depth, 0.02)
    assert pairs == [((1.03, 'b'), (1.02, 'x')), ((1.07, 'c'), (1.08, 'y'))]


def test_association_file_in_either_order(tmp_path):
    path = tmp_path / 'associations.txt'
    path.write_text('# comment\n1.0 rgb/a.png 1.01 depth/a.png\n'
                    '2.01 depth/b.png 2.0 rgb/b.png\n')
    assert read_associations(str(path)) == [('rgb/a.png', 'depth/a.png', 1.0, 1.01),
                                            ('rgb/b.png', 'depth/b.png', 2.0, 2.01)]
    path.write_text('1.0 rgb/a.png\n')
    with pytest.raises(ValueError, match='associations.txt:1'):
        read_associations(str(path))


def test_camera_files_and_clear_errors(tmp_path):
    good = tmp_path / 'cam.yaml'
    good.write_text(yaml.safe_dump({'fx': 300.0, 'fy': 301.0, 'cx': 159.5, 'cy': 119.5,
                                    'width': 320, 'height': 240}))
    assert load_camera(str(good)) == (300.0, 301.0, 159.5, 119.5, (240, 320))
    info = tmp_path / 'info.yaml'
    info.write_text(yaml.safe_dump({'image_width': 640, 'image_height': 480,
                                    'camera_matrix': {'rows': 3, 'cols': 3, 'data': [
                                        500.0, 0, 320, 0, 501.0, 240, 0, 0, 1]}}))
    assert load_camera(str(info)) == (500.0, 501.0, 320.0, 240.0, (480, 640))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('fx: 1\n')
    with pytest.raises(ValueError, match='needs fx, fy, cx, cy'):
        load_camera(str(bad))
    with pytest.raises(FileNotFoundError, match='camera file not found'):
        load_camera(str(tmp_path / 'missing.yaml'))
    with pytest.raises(ValueError, match='cannot tell the camera'):
        load_camera('auto', str(tmp_path / 'my_room'))


def test_samples_are_letterboxed_with_consistent_geometry():
    scene = render_scene(424252, 40, 40)          # square frame into a 32 x 48 model input
    sample = make_sample(scene['image'], scene['depth'], scene['intrinsics'], (32, 48))
    assert sample['image'].shape == (3, 32, 48) and sample['depth'].shape == (1, 32, 48)
    assert sample['normals'].shape == (3, 32, 48) and sample['edge'].shape == (1, 32, 48)
    fx, fy, cx, cy = sample['intrinsics'].tolist()
    assert fx == pytest.approx(scene['intrinsics'][0] * 0.8)
    assert cx == pytest.approx((19.5 + 0.5) * 0.8 - 0.5 + 8)
    assert (sample['depth'][0, :, :8] == 0).all()                   # padding: no depth
    assert (sample['edge'][0, :, :8] == IGNORE_INDEX).all()
    # Flipping a frame (as the augmentation does) flips the derived normals' x.
    scene = render_scene(424253, 32, 48)
    fx, fy, cx, cy = scene['intrinsics']
    plain = make_sample(scene['image'], scene['depth'], (fx, fy, cx, cy), (32, 48))
    flipped = make_sample(scene['image'][:, ::-1].copy(), scene['depth'][:, ::-1].copy(),
                          (fx, fy, 47 - cx, cy), (32, 48))
    mirror = plain['normals'].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    valid = plain['normals'].abs().sum(0) > 0
    assert valid.float().mean() > 0.5
    torch.testing.assert_close(flipped['normals'], mirror, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='H x W x 3 uint8'):
        make_sample(scene['depth'], scene['depth'], scene['intrinsics'], (32, 48))


# ----------------------------------------------------------------------------- rosbag2
def write_bag(path, storage, frames, depth_encoding='32FC1', camera=(40.0, 41.0, 23.5, 15.5),
              image_topic='/cam/image', depth_topic='/cam/depth', info_topic='/cam/info'):
    """A rosbag2 bag written by rosbags: frames = [(stamp_ns, rgb, depth or None, depth
    stamp offset ns)]."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_typestore, Stores
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    header_t, time_t = types['std_msgs/msg/Header'], types['builtin_interfaces/msg/Time']
    image_t, info_t = types['sensor_msgs/msg/Image'], types['sensor_msgs/msg/CameraInfo']
    roi_t = types['sensor_msgs/msg/RegionOfInterest']

    def header(stamp):
        return header_t(stamp=time_t(sec=stamp // 10 ** 9, nanosec=stamp % 10 ** 9),
                        frame_id='camera_optical')

    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {
            image_topic: writer.add_connection(image_topic, image_t.__msgtype__,
                                               typestore=store),
            depth_topic: writer.add_connection(depth_topic, image_t.__msgtype__,
                                               typestore=store),
            info_topic: writer.add_connection(info_topic, info_t.__msgtype__,
                                              typestore=store)}
        for stamp, rgb, depth, offset in frames:
            h, w = rgb.shape[:2]
            fx, fy, cx, cy = camera
            info = info_t(header=header(stamp), height=h, width=w, distortion_model='plumb_bob',
                          d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]),
                          r=np.eye(3).ravel(), p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0,
                                                           1.0, 0]),
                          binning_x=0, binning_y=0,
                          roi=roi_t(x_offset=0, y_offset=0, height=0, width=0,
                                    do_rectify=False))
            writer.write(conns[info_topic], stamp, store.serialize_cdr(info, info_t.__msgtype__))
            bgr = np.ascontiguousarray(rgb[..., ::-1])
            msg = image_t(header=header(stamp), height=h, width=w, encoding='bgr8',
                          is_bigendian=0, step=w * 3, data=bgr.reshape(-1))
            writer.write(conns[image_topic], stamp, store.serialize_cdr(msg, image_t.__msgtype__))
            if depth is None:
                continue
            if depth_encoding == '32FC1':
                raw = depth.astype('<f4')
            else:
                raw = np.round(np.nan_to_num(depth) * 1000).astype('<u2')
            msg = image_t(header=header(stamp + offset), height=h, width=w,
                          encoding=depth_encoding, is_bigendian=0, step=w * raw.itemsize,
                          data=raw.view(np.uint8).reshape(-1))
            # Recorded later than stamped (a depth pipeline's latency): pairing uses headers.
            writer.write(conns[depth_topic], stamp + offset + 30_000_000,
                         store.serialize_cdr(msg, image_t.__msgtype__))


def bag_frames(count=4, shape=(32, 48)):
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        depth = rng.uniform(0.5, 4.0, shape).astype(np.float32)
        depth[0, 0] = np.nan if i % 2 else 0.0
        frames.append((1_700_000_000_000_000_000 + i * 100_000_000, rgb, depth, 5_000_000))
    return frames


@pytest.mark.parametrize('storage,encoding', [('sqlite3', '32FC1'), ('mcap', '16UC1')])
def test_bag_frames_pair_by_header_stamps(tmp_path, storage, encoding):
    frames = bag_frames()
    frames[2] = (frames[2][0], frames[2][1], frames[2][2], 60_000_000)   # depth too late
    bag = str(tmp_path / 'rec')
    write_bag(bag, storage, frames, encoding)
    got = read_bag_frames(bag, '/cam/image', '/cam/depth', '/cam/info', tolerance=0.02)
    assert [f[3] for f in got] == [frames[i][0] for i in (0, 1, 3)]
    for (rgb, depth, intrinsics, stamp), i in zip(got, (0, 1, 3)):
        np.testing.assert_array_equal(rgb, frames[i][1])
        expected = np.nan_to_num(frames[i][2])
        np.testing.assert_allclose(depth, expected, atol=0.0006 if encoding == '16UC1' else 0)
        assert depth[0, 0] == 0.0
        assert intrinsics == (40.0, 41.0, 23.5, 15.5)
    assert len(read_bag_frames(bag, '/cam/image', '/cam/depth', '/cam/info',
                               tolerance=0.1)) == 4


def test_bag_errors_name_the_problem(tmp_path):
    bag = str(tmp_path / 'rec')
    write_bag(bag, 'sqlite3', bag_frames(2))
    with pytest.raises(ValueError, match='no topic /nope'):
        read_bag_frames(bag, '/nope', '/cam/depth', '/cam/info')
    with pytest.raises(ValueError, match='/cam/info is sensor_msgs/msg/CameraInfo'):
        read_bag_frames(bag, '/cam/info', '/cam/depth', camera=TUM_CAMERAS['ros'] + (None,))
    with pytest.raises(ValueError, match='intrinsics unknown'):
        read_bag_frames(bag, '/cam/image', '/cam/depth')
    with pytest.raises(FileNotFoundError, match='bag not found'):
        read_bag_frames(str(tmp_path / 'none'), '/cam/image', '/cam/depth')


def test_depth_message_encodings():
    class Msg:
        def __init__(self, values, encoding, big=False):
            self.height, self.width = values.shape
            self.encoding, self.is_bigendian = encoding, int(big)
            self.step = values.shape[1] * values.itemsize + 4          # padded rows
            rows = np.zeros((self.height, self.step), np.uint8)
            rows[:, :values.shape[1] * values.itemsize] = values.view(np.uint8)
            self.data = rows.reshape(-1)

    metres = np.array([[1.5, np.inf], [0.0, 2.25]], np.float32)
    np.testing.assert_array_equal(depth_from_msg(Msg(metres, '32FC1')),
                                  [[1.5, 0.0], [0.0, 2.25]])
    mm = np.array([[1500, 0], [3, 65535]], '>u2')
    np.testing.assert_allclose(depth_from_msg(Msg(mm, '16UC1', big=True)),
                               [[1.5, 0.0], [0.003, 65.535]], rtol=1e-6)
    with pytest.raises(ValueError, match='REP 118'):
        depth_from_msg(Msg(metres, 'rgb8'))


# ----------------------------------------------------------------------------- losses, config
def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    teacher = torch.randn(2, 5, 4, 6)
    assert float(distillation_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 5, 4, 6, requires_grad=True)
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert float(loss.detach()) > 0
    loss.backward()
    stepped = (student - 10.0 * student.grad).detach()
    assert float(distillation_loss(stepped, teacher, 2.0)) < float(loss.detach())
    mask = torch.zeros(2, 1, 4, 6, dtype=torch.bool)
    assert float(distillation_loss(student, teacher, mask=mask).detach()) == 0.0
    with pytest.raises(ValueError, match='differ in shape'):
        distillation_loss(student[:, :3], teacher)


def test_distillation_starts_at_zero_and_grows_with_drift():
    torch.manual_seed(0)     # weights, input and drift: the same in any test order
    model = build_model(resolve_model(TINY['base'])[0].replace(
        **{k: v for k, v in TINY.items() if k != 'base'}))
    tune = FineTune(model, load_config({'data': {'source': 'tum', 'root': 'x'}})['finetune']
                    | {'distill': 1.0}, 'tum')
    model.train()
    x = torch.randn(2, 3, 32, 48)
    targets = {'depth': torch.ones(2, 1, 32, 48)}

    def term():
        tune.before_forward(x)
        outputs = model.forward_train(x)
        return float(tune.add_losses({'total': torch.zeros(())}, x, outputs,
                                     targets)['semseg_distill'])

    assert abs(term()) < 1e-6                     # same weights, same routing noise
    with torch.no_grad():
        model.heads['semseg'].pred.weight.add_(0.5 * torch.randn_like(
            model.heads['semseg'].pred.weight))
    assert term() > 1e-3


def test_finetune_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown training config keys in section "
                                         "'finetune'"):
        load_config({'data': {'source': 'tum', 'root': 'x'}, 'finetune': {'distil': 1}})
    with pytest.raises(ValueError, match='finetune.distill must be >= 0'):
        load_config({'data': {'source': 'tum', 'root': 'x'}, 'finetune': {'distill': -1}})
    with pytest.raises(ValueError, match='data.root'):
        load_config({'data': {'source': 'rosbag'}})
    config = {'model': TINY, 'data': {'source': 'tum', 'root': str(tmp_path)},
              'finetune': {'freeze': ['not_a_module']}, 'train': {'device': 'cpu'}}
    with pytest.raises(ValueError, match="'not_a_module' matches no parameter"):
        Trainer(config)


def test_recipe_loads_and_starts_from_the_shipped_model():
    config = load_config(os.path.join(REPO, 'mtdp_ros', 'training', 'configs',
                                      'finetune_rgbd.yaml'))
    assert config['init'] == 'model' and config['model'] == 'default_mlore'
    assert config['data']['source'] in ('tum', 'rosbag')
    assert set(config['loss']['weights']) <= {'depth', 'normals', 'edge'}
    assert config['finetune']['distill'] > 0 or config['finetune']['freeze']


# ----------------------------------------------------------------------------- the loop
def test_training_on_a_bag_distills_semseg_and_keeps_frozen_parameters(tmp_path):
    bag = str(tmp_path / 'rec')
    write_bag(bag, 'mcap', bag_frames(4))
    config = {'model': TINY, 'init': 'random',
              'data': {'source': 'rosbag', 'root': bag, 'val_root': bag, 'workers': 0,
                       'image_topic': '/cam/image', 'depth_topic': '/cam/depth',
                       'camera_info_topic': '/cam/info'},
              'train': {'steps': 3, 'batch_size': 2, 'lr': 1e-3, 'warmup_steps': 0,
                        'amp': 'off', 'device': 'cpu', 'log_every': 1,
                        'checkpoint_every': 0},
              'finetune': {'distill': 1.0, 'freeze': ['heads.semseg']},
              'eval': {'num': 2, 'batch_size': 2},
              'output': {'dir': str(tmp_path / 'run'), 'resume': 'never'}}
    trainer = Trainer(config, echo=lambda message: None)
    assert trainer.criterion.tasks == ('depth', 'normals', 'edge')
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if n.startswith('heads.semseg')}
    assert frozen and all(not p.requires_grad for n, p in trainer.model.named_parameters()
                          if n in frozen)
    moving = trainer.model.heads['depth'].pred.weight.detach().clone()
    summary = trainer.fit()
    assert summary['steps'] == 3
    losses = summary['final_losses']
    # Teacher and student share the routing noise: the term is the drift (>= 0, small).
    assert 'semseg' not in losses and losses['semseg_distill'] >= -1e-6
    for name, param in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert not torch.equal(trainer.model.heads['depth'].pred.weight, moving)
    validation = summary['validation']
    assert set(validation) == {'depth', 'normals', 'edge', 'semseg_agreement'}
    assert 0.0 <= validation['semseg_agreement']['with_start'] <= 1.0


@pytest.mark.slow  # fine-tunes for a minute: `make test-fast` leaves it out
def test_finetuning_on_zoomed_tum_scenes_lowers_held_out_depth_error(tmp_path):
    """The shipped model, a camera with twice its focal length (synthetic rooms exported
    as TUM folders), 12 steps of batch 4: held-out abs_rel must fall by at least 0.04.

    The settings of ``scripts/finetune_rgbd_check.py --seeds 0 1 2 --modes freeze_encoder
    --steps 12 --batch-size 4 --train-scenes 16 --val-scenes 8 --lr 1e-4`` (this test is
    its seed 0), measured on the 2-core VM: abs_rel 0.340 -> 0.243 / 0.229 / 0.269 for
    seeds 0 / 1 / 2 (falls of 0.097, 0.111, 0.071).
    """
    margin = 0.04
    train_dir, val_dir = str(tmp_path / 'train'), str(tmp_path / 'val')
    export_synthetic_tum(train_dir, range(200000, 200016), zoom=2.0)
    export_synthetic_tum(val_dir, range(424242, 424250), zoom=2.0)
    config, weights = resolve_model('default_mlore')
    start = build_model(config)
    load_checkpoint(start, weights)
    held_out = TUMRGBD(val_dir, config.image_size, augment=False)
    before = evaluate_rgbd(start, held_out, tasks=('depth',))['depth']['abs_rel']
    torch.manual_seed(0)
    trainer = Trainer({
        'model': 'default_mlore', 'init': 'model',
        'data': {'source': 'tum', 'root': train_dir, 'camera': 'auto', 'workers': 0,
                 'augment': True},
        'train': {'steps': 12, 'batch_size': 4, 'lr': 1e-4, 'warmup_steps': 0,
                  'schedule': 'constant', 'amp': 'off', 'device': 'cpu', 'seed': 0,
                  'log_every': 1000, 'checkpoint_every': 0},
        'loss': {'weights': {'depth': 1.0, 'normals': 10.0, 'edge': 50.0}},
        'finetune': {'distill': 0.0, 'freeze': ['encoder', 'semseg']},
        'eval': {'num': 0},
        'output': {'dir': str(tmp_path / 'run'), 'half': False, 'resume': 'never'}},
        echo=lambda message: None)
    trainer.fit()
    scores = evaluate_rgbd(trainer.model, held_out, teacher=start, tasks=('depth',))
    after = scores['depth']['abs_rel']
    assert after < before - margin, f'abs_rel {before:.4f} -> {after:.4f}'
    # semseg parameters and all BatchNorm statistics were frozen: classes barely move.
    assert scores['semseg_agreement']['with_start'] > 0.95
    # The saved model states the camera it now predicts depth for (twice the focal length
    # of the start's), so the node's focal correction does not rescale it a second time.
    saved, _ = resolve_model(str(tmp_path / 'run' / 'model.safetensors'))
    assert saved.train_focal_px == pytest.approx(2.0 * config.train_focal_px, rel=0.01)
