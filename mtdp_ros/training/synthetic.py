"""Procedural indoor scenes with exact multi-task labels, ray cast in batched PyTorch.

Every seed describes one room (floor, four walls, ceiling) with furniture-like primitives
(boxes, spheres, vertical cylinders) and wall-mounted panels (doors, windows, pictures),
seen by a pinhole camera at a person's eye height. Rendering casts one ray per pixel and
gives, exactly:

* ``image``: Lambertian shading of procedural textures under a ceiling lamp with cast
  shadows, ambient light, emissive windows, exposure, tone mapping and sensor noise;
* ``semseg``: NYUD-v2 40-class ids (0-based, the order of the multi-task NYUD tarball);
* ``depth``: metric z-depth (metres along the optical axis, as NYUD's depth maps);
* ``normals``: unit surface normals in the camera optical frame (x right, y down,
  z forward), facing the camera;
* ``edge``: 1-pixel-wide boundaries between different surfaces (semantic or instance
  changes) and depth discontinuities;
* ``intrinsics``: ``(fx, fy, cx, cy)`` in pixels (OpenCV convention: pixel ``(u, v)`` has
  its centre at ``(u, v)``); the horizontal field of view is the Kinect's of NYUD-v2
  (``fx = fy = 518.8579 / 640 * width``), or that focal length times ``focal_scale``
  (a zoomed or wide-angle camera in the same room, for camera-aware depth evaluation).

Scene parameters are drawn on the CPU with NumPy from the seed alone, so a seed gives the
same scene on any device and at any resolution; rendering runs on ``device`` (CUDA when
available for training batches). Bit-exact equality holds for one device; CPU and CUDA
can differ by float rounding (a pixel on a silhouette may flip).

Classes used (NYUD-40 ids, 0-based): see ``SCENE_CLASSES``. Only these ever appear, so
``mIoU`` over the classes present is the meaningful score on synthetic data.
"""

import math

import numpy as np
import torch

from .raycast import check_focal_scale, intrinsics_for, ray_directions, surface_albedo, trace
from .scene_sampling import collate_scenes, sample_scene

# The tasks a rendered scene has labels for (render_params' keys).
SCENE_TASKS = ('semseg', 'depth', 'normals', 'edge')


# ----------------------------------------------------------------------------- rendering
def _gather_rows(table, index):
    """Rows of ``table`` (B x S x C) picked by ``index`` (B x P): B x P x C."""
    return table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]))


_MASK32 = 0xFFFFFFFF


def _hash32(x):
    """Integer hash of int64 tensors holding 32-bit values (exact on every device)."""
    x = x & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def _sensor_noise(seeds, height, width, device):
    """Zero-mean unit-variance pixel noise, B x 3 x H x W, a pure function of each seed.

    Drawn by hashing (seed, channel, pixel) on ``device`` rather than with a random
    generator, so batches render fast on the GPU and every seed gets the same noise on
    any device and in any batch. Triangular distribution (sum of two uniforms).
    """
    seeds = torch.as_tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
    index = torch.arange(3 * height * width, dtype=torch.int64, device=device)
    key = _hash32(_hash32(seeds * 0x2545F491 + 0x3C6EF372)[:, None] + index[None])
    first = _hash32(key).double()
    second = _hash32(key ^ 0x5BD1E995).double()
    triangular = (first + second) / 2.0 ** 32 - 1.0          # in (-1, 1), variance 1/6
    return (triangular * math.sqrt(6.0)).float().view(len(seeds), 3, height, width)


def _edges(instance, depth):
    """One-pixel-wide boundaries between surfaces and across depth jumps.

    A pixel is an edge if its right or lower neighbour belongs to another surface or lies
    across a depth jump of more than 5 %.
    """
    edge = torch.zeros_like(instance, dtype=torch.bool)
    for dim in (-1, -2):
        n = instance.shape[dim]
        a_inst, b_inst = instance.narrow(dim, 0, n - 1), instance.narrow(dim, 1, n - 1)
        a_d, b_d = depth.narrow(dim, 0, n - 1), depth.narrow(dim, 1, n - 1)
        jump = (a_d - b_d).abs() > 0.05 * torch.minimum(a_d, b_d)
        edge.narrow(dim, 0, n - 1).logical_or_(a_inst != b_inst).logical_or_(jump)
    return edge


def render_params(scene, height, width, noise=True, focal_scale=1.0):
    """Render collated scene tensors (see ``collate_scenes``) at ``height`` x ``width``.

    ``focal_scale``: the camera's focal length relative to the default (Kinect) one.

    Returns float/long tensors on the scene's device: ``image`` B x 3 x H x W in [0, 1],
    ``semseg`` B x 1 x H x W (long), ``depth`` B x 1 x H x W (m), ``normals`` B x 3 x H x W
    (camera optical frame), ``edge`` B x 1 x H x W (float 0/1), ``instance`` B x 1 x H x W
    (surface index), ``intrinsics`` B x 4.
    """
    if height < 2 or width < 2:
        raise ValueError(f'image size must be at least 2 x 2, got {height} x {width}')
    device = scene['room'].device
    batch = scene['room'].shape[0]
    rot = scene['rotation']                                              # B x 3 x 3
    dirs_cam = ray_directions(height, width, device, focal_scale)        # P x 3
    dirs = torch.einsum('bij,pj->bpi', rot, dirs_cam)                     # B x P x 3
    origin = scene['cam_pos'][:, None]                                    # B x 1 x 3
    t, surface, normal, uv, up = trace(scene, origin, dirs)
    props = _gather_rows(scene['surfaces'], surface)
    albedo = surface_albedo(props, uv, up)

    # Lighting: ceiling lamp with inverse-square-like falloff and hard shadows, ambient
    # stronger on up-facing surfaces, emissive windows.
    point = origin + dirs * t[..., None]
    to_light = scene['light'][:, None] - point
    dist = to_light.norm(dim=-1).clamp(min=1e-3)
    lambert = ((normal * to_light).sum(-1) / dist).clamp(min=0)
    shadow_origin = point + normal * 2e-3
    t_shadow = trace(scene, shadow_origin, to_light, room_too=False)[0]
    lit = (t_shadow >= 1.0).float()
    falloff = scene['light_power'][:, None] / (1.0 + (dist / 2.5) ** 2)
    ambient = scene['ambient'][:, None] * (0.8 + 0.2 * normal[..., 1])
    radiance = albedo * (ambient[..., None]
                         + (lambert * falloff * lit)[..., None] * scene['light_colour'][:, None])
    radiance = radiance + albedo * props[..., 10:11]
    # Auto exposure: map the mean radiance to the scene's target brightness, then tone map.
    mean = radiance.mean(dim=(1, 2)).clamp(min=1e-4)
    exposure = -torch.log1p(-scene['brightness'].clamp(max=0.9)) / mean
    image = 1.0 - torch.exp(-radiance * exposure[:, None, None])
    image = image.clamp(0, 1) ** (1 / 1.6)

    def grid(x, channels):
        return x.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()

    image = grid(image, 3)
    if noise:
        image = (image + 0.012 * _sensor_noise(scene['seed'], height, width, device)).clamp(0, 1)
    # Quantise like a camera does, so batch and single renders give the same uint8 image.
    image = torch.round(image * 255) / 255
    rot_t = rot.transpose(1, 2)
    normals_cam = torch.einsum('bij,bpj->bpi', rot_t, normal)
    depth = grid(t[..., None], 1)
    instance = grid(surface[..., None], 1)
    semseg = grid(props[..., 0:1].round().long(), 1)
    edge = _edges(instance, depth).float()
    fx, fy, cx, cy = intrinsics_for(height, width, focal_scale)
    intr = torch.tensor([fx, fy, cx, cy], dtype=torch.float32, device=device).expand(batch, 4)
    return {'image': image, 'semseg': semseg, 'depth': depth,
            'normals': grid(normals_cam, 3), 'edge': edge, 'instance': instance,
            'intrinsics': intr.clone()}


def _check_size(height, width):
    for name, value in (('height', height), ('width', width)):
        if not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f'{name} must be an integer >= 2, got {value!r}')


def render_batch(seeds, height, width, device='cpu', noise=True, focal_scale=1.0):
    """Render scenes ``seeds`` as a training batch of torch tensors on ``device``.

    ``image`` is float B x 3 x H x W in [0, 1] (normalise with the model's mean/std);
    the targets follow the model's target format: ``semseg`` long B x 1 x H x W (255 =
    ignore, never produced here), ``depth`` B x 1 x H x W metres (0 = invalid), ``normals``
    B x 3 x H x W unit vectors, ``edge`` B x 1 x H x W in {0, 1}; plus ``instance`` (surface
    index) and ``intrinsics`` B x 4 (fx, fy, cx, cy). ``focal_scale`` multiplies the focal
    length of the camera (the scenes stay the same).
    """
    _check_size(height, width)
    focal_scale = check_focal_scale(focal_scale)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError('render_batch needs at least one seed')
    scenes = [sample_scene(s) for s in seeds]
    return render_params(collate_scenes(scenes, device), height, width, noise=noise,
                         focal_scale=focal_scale)


def render_scene(seed, height, width, device='cpu', focal_scale=1.0):
    """Render scene ``seed`` as NumPy arrays (``focal_scale``: see :func:`render_batch`).

    Returns ``image`` H x W x 3 uint8 RGB, ``semseg`` H x W uint8 (NYUD-40 ids, 255 =
    ignore), ``depth`` H x W float32 metres, ``normals`` H x W x 3 float32 (camera optical
    frame), ``edge`` H x W uint8 0/1, ``instance`` H x W int32 (surface index),
    ``intrinsics`` (fx, fy, cx, cy) floats, and ``camera_to_world`` 4 x 4 float32 (world
    y up, floor at y = 0).
    """
    out = render_batch([seed], height, width, device, focal_scale=focal_scale)
    scene = sample_scene(seed)
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3], pose[:3, 3] = scene['rotation'], scene['cam_pos']
    return {
        'image': (out['image'][0].permute(1, 2, 0) * 255).round().byte().cpu().numpy(),
        'semseg': out['semseg'][0, 0].to(torch.uint8).cpu().numpy(),
        'depth': out['depth'][0, 0].cpu().numpy().astype(np.float32),
        'normals': out['normals'][0].permute(1, 2, 0).cpu().numpy().astype(np.float32),
        'edge': out['edge'][0, 0].to(torch.uint8).cpu().numpy(),
        'instance': out['instance'][0, 0].to(torch.int32).cpu().numpy(),
        'intrinsics': tuple(float(v) for v in intrinsics_for(height, width, focal_scale)),
        'camera_to_world': pose,
    }


class SyntheticStream:
    """Endless training batches: seeds ``start, start + 1, ...`` (wrapping below ``stop``).

    Scene parameters are drawn in ``workers`` background processes (a torch DataLoader) and
    rendered on ``device`` in the calling process, so a GPU is fed without a CPU bottleneck.
    """

    def __init__(self, batch_size, height, width, device='cpu', start=0, stop=400000,
                 workers=0, rank=0, world_size=1):
        if stop <= start:
            raise ValueError(f'empty seed range [{start}, {stop})')
        self.batch_size, self.height, self.width = batch_size, height, width
        self.device = device
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size
        self.workers = workers
        self.position = 0          # batches produced so far (for resume)

    def seeds_for(self, step):
        """Seeds of batch ``step`` on this rank (disjoint across ranks and steps)."""
        span = self.stop - self.start
        first = (step * self.world_size + self.rank) * self.batch_size
        return [self.start + (first + i) % span for i in range(self.batch_size)]

    def __iter__(self):
        from torch.utils.data import DataLoader, IterableDataset

        stream = self

        class _Params(IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                wid, nw = (info.id, info.num_workers) if info else (0, 1)
                step = stream.position + wid
                while True:
                    yield step, [sample_scene(s) for s in stream.seeds_for(step)]
                    step += nw

        loader = DataLoader(_Params(), batch_size=None, num_workers=self.workers,
                            prefetch_factor=4 if self.workers else None,
                            persistent_workers=False)
        for step, scenes in loader:
            self.position = step + 1
            yield render_params(collate_scenes(scenes, self.device), self.height, self.width)
