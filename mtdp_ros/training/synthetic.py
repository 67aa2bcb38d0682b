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

# NYUD-v2 40-class ids (0-based) of the surfaces the generator makes.
WALL, FLOOR, CABINET, BED, DOOR, WINDOW, PICTURE, CEILING, BOX = 0, 1, 2, 3, 7, 8, 10, 21, 28
OTHERFURNITURE, OTHERPROP = 38, 39
SCENE_CLASSES = {
    WALL: 'wall', FLOOR: 'floor', CABINET: 'cabinet', BED: 'bed', DOOR: 'door',
    WINDOW: 'window', PICTURE: 'picture', CEILING: 'ceiling', BOX: 'box',
    OTHERFURNITURE: 'otherfurniture (cylinders: stools, pillars, bins)',
    OTHERPROP: 'otherprop (spheres: balls, globes)',
}
IGNORE_INDEX = 255
# The tasks a rendered scene has labels for (render_params' keys).
SCENE_TASKS = ('semseg', 'depth', 'normals', 'edge')

# Kinect of NYUD-v2: fx = 518.86 px at 640 px width (about 63 degrees horizontally).
FOCAL_PER_WIDTH = 518.8579 / 640.0

# Texture patterns (one per kind of surface; the class is what the pattern depicts).
(PAT_PAINT, PAT_TILES, PAT_PLANKS, PAT_CEILING, PAT_CABINET, PAT_FABRIC, PAT_CARDBOARD,
 PAT_DOOR, PAT_WINDOW, PAT_PICTURE, PAT_BALL, PAT_METAL) = range(12)

ROOM_SURFACES = 6            # floor, ceiling, wall x=0, wall x=X, wall z=0, wall z=Z
# Per-surface table columns: class, pattern, colour a (3), colour b (3), scale, hash seed,
# emission, count (doors of a cabinet etc.).
_COLS = 12
EPS = 1e-4


# ----------------------------------------------------------------------------- sampling
def _hsv(rng, h, s, v):
    """RGB in [0, 1] from HSV ranges ``(lo, hi)`` (hue in degrees)."""
    hue = rng.uniform(*h) % 360.0 / 60.0
    sat, val = rng.uniform(*s), rng.uniform(*v)
    c = val * sat
    x = c * (1 - abs(hue % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(hue) % 6]
    return np.array(rgb) + (val - c)


def _surface(cls, pattern, a, b, scale=1.0, seed=0.0, emission=0.0, count=1.0):
    row = np.zeros(_COLS, dtype=np.float32)
    row[0], row[1] = cls, pattern
    row[2:5], row[5:8] = a, b
    row[8], row[9], row[10], row[11] = scale, seed, emission, count
    return row


def _room_styles(rng):
    """Texture rows of floor, ceiling and the four walls."""
    if rng.random() < 0.5:
        grey = rng.random() < 0.5
        a = _hsv(rng, (20, 50), (0.0, 0.12) if grey else (0.1, 0.35), (0.55, 0.9))
        b = a * rng.uniform(0.6, 0.85)
        floor = _surface(FLOOR, PAT_TILES, a, b, rng.uniform(0.3, 0.6), rng.uniform(0, 50))
    else:
        a = _hsv(rng, (18, 38), (0.35, 0.7), (0.35, 0.75))
        b = a * rng.uniform(0.55, 0.8)
        floor = _surface(FLOOR, PAT_PLANKS, a, b, rng.uniform(0.12, 0.25), rng.uniform(0, 50))
    c = _hsv(rng, (30, 60), (0.0, 0.08), (0.85, 0.97))
    ceiling = _surface(CEILING, PAT_CEILING, c, c * 0.8, rng.uniform(0.5, 0.7),
                       rng.uniform(0, 50), count=float(rng.random() < 0.6))
    paint = _hsv(rng, (0, 360), (0.04, 0.35), (0.6, 0.92))
    walls = []
    accent = rng.integers(0, 4) if rng.random() < 0.25 else -1
    for index in range(4):
        colour = _hsv(rng, (0, 360), (0.15, 0.45), (0.5, 0.85)) if index == accent else paint
        walls.append(_surface(WALL, PAT_PAINT, colour, colour * 0.85, 1.0, rng.uniform(0, 50)))
    return [floor, ceiling] + walls


def _camera(rng, size_x, size_z):
    """Camera position and (yaw, pitch, roll): inside the room, looking across it."""
    for _ in range(20):
        pos = np.array([rng.uniform(0.5, size_x - 0.5), rng.uniform(1.1, 1.6),
                        rng.uniform(0.5, size_z - 0.5)])
        target = np.array([rng.uniform(0.3, size_x - 0.3), rng.uniform(0.3, size_z - 0.3)])
        delta = target - pos[[0, 2]]
        if np.hypot(*delta) > 2.0:
            break
    yaw = math.atan2(delta[0], delta[1]) + rng.uniform(-0.2, 0.2)
    pitch = math.radians(rng.uniform(-25.0, -5.0))
    roll = math.radians(rng.uniform(-3.0, 3.0))
    return pos, yaw, pitch, roll


def camera_rotation(yaw, pitch, roll):
    """Camera-to-world rotation (columns: optical x right, y down, z forward; world y up)."""
    forward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                        math.cos(yaw) * math.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = (math.cos(roll) * right + math.sin(roll) * down,
                   -math.sin(roll) * right + math.cos(roll) * down)
    return np.stack([right, down, forward], axis=1)


class _Placer:
    """Non-overlapping footprints (circles) inside the room, away from the camera."""

    def __init__(self, size_x, size_z, camera_xz):
        self.size_x, self.size_z = size_x, size_z
        self.circles = [(camera_xz[0], camera_xz[1], 0.45)]

    def free(self, x, z, radius, wall_margin):
        if not (wall_margin <= x <= self.size_x - wall_margin
                and wall_margin <= z <= self.size_z - wall_margin):
            return False
        return all(math.hypot(x - cx, z - cz) > radius + cr for cx, cz, cr in self.circles)

    def add(self, x, z, radius):
        self.circles.append((x, z, radius))


def _wall_frame(wall, size_x, size_z):
    """(origin xz, along unit xz, inward unit xz, length) of wall 0..3 (x=0, x=X, z=0, z=Z)."""
    if wall == 0:
        return np.array([0.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0]), size_z
    if wall == 1:
        return np.array([size_x, 0.0]), np.array([0.0, 1.0]), np.array([-1.0, 0.0]), size_z
    if wall == 2:
        return np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), size_x
    return np.array([0.0, size_z]), np.array([1.0, 0.0]), np.array([0.0, -1.0]), size_x


def _wall_yaw(inward):
    # Local +z of an object points into the room; yaw rotates local z onto ``inward``.
    return math.atan2(inward[0], inward[1])


def _wall_objects(rng, size_x, size_z, height, camera_pos, forward_xz, placer):
    """Doors, windows and pictures: thin boxes on the walls (visible walls preferred)."""
    boxes, spans = [], {w: [] for w in range(4)}
    weights = []
    for wall in range(4):
        origin, along, inward, length = _wall_frame(wall, size_x, size_z)
        centre = origin + along * length / 2
        weights.append(max(0.0, float(np.dot(forward_xz, centre - camera_pos[[0, 2]]))) + 0.3)
    weights = np.array(weights) / sum(weights)
    for _ in range(rng.integers(1, 5)):
        kind = rng.choice(3, p=[0.3, 0.35, 0.35])
        wall = rng.choice(4, p=weights)
        origin, along, inward, length = _wall_frame(wall, size_x, size_z)
        if kind == 0:
            width, tall = rng.uniform(0.8, 1.0), rng.uniform(2.0, 2.15)
            bottom = 0.0
            a = _hsv(rng, (20, 40), (0.0, 0.5), (0.45, 0.95))
            row = _surface(DOOR, PAT_DOOR, a, a * 0.7, rng.uniform(0.05, 0.09), 0.0)
        elif kind == 1:
            width, tall = rng.uniform(1.0, 1.8), rng.uniform(1.0, 1.5)
            bottom = rng.uniform(0.8, 1.0)
            a = _hsv(rng, (190, 215), (0.1, 0.35), (0.85, 1.0))
            frame = _hsv(rng, (0, 360), (0.0, 0.05), (0.75, 0.95))
            row = _surface(WINDOW, PAT_WINDOW, a, frame, rng.uniform(0.05, 0.08), 0.0,
                           emission=rng.uniform(0.5, 0.9), count=float(rng.integers(1, 4)))
        else:
            width, tall = rng.uniform(0.45, 1.1), rng.uniform(0.35, 0.8)
            bottom = rng.uniform(1.3, 1.7) - tall / 2
            a = _hsv(rng, (0, 360), (0.5, 0.95), (0.5, 0.95))
            frame = _hsv(rng, (20, 45), (0.0, 0.7), (0.05, 0.6))
            row = _surface(PICTURE, PAT_PICTURE, a, frame, rng.uniform(0.03, 0.06),
                           rng.uniform(0, 50), count=rng.uniform(0, 360))
        if bottom + tall > height - 0.05 or width > length - 0.4:
            continue
        for _ in range(10):
            start = rng.uniform(0.2, length - width - 0.2)
            if all(start + width < s0 - 0.1 or start > s1 + 0.1 for s0, s1 in spans[wall]):
                break
        else:
            continue
        spans[wall].append((start, start + width))
        thick = rng.uniform(0.03, 0.05)
        mid = origin + along * (start + width / 2) + inward * thick / 2
        centre = np.array([mid[0], bottom + tall / 2, mid[1]])
        boxes.append((centre, np.array([width / 2, tall / 2, thick / 2]), _wall_yaw(inward), row))
        if kind == 0:   # keep the swing of a door clear of furniture
            front = origin + along * (start + width / 2) + inward * 0.55
            placer.add(front[0], front[1], 0.5)
    return boxes


def _floor_objects(rng, size_x, size_z, camera_pos, yaw, placer):
    """Cabinets, beds, boxes (boxes), balls (spheres) and stools/bins (cylinders)."""
    boxes, spheres, cylinders = [], [], []
    for _ in range(rng.integers(2, 8)):
        kind = rng.choice(5, p=[0.2, 0.12, 0.28, 0.2, 0.2])
        against_wall = kind in (0, 1) and rng.random() < 0.7
        if kind == 0:
            half = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.3)])
            if rng.random() < 0.5:
                a = _hsv(rng, (15, 40), (0.35, 0.7), (0.3, 0.7))
            else:
                a = _hsv(rng, (0, 360), (0.0, 0.08), (0.55, 0.95))
            row = _surface(CABINET, PAT_CABINET, a, a * 0.55, 1.0, rng.uniform(0, 50),
                           count=float(max(1, round(2 * half[0] / 0.5))))
        elif kind == 1:
            half = np.array([rng.uniform(0.7, 1.0), rng.uniform(0.2, 0.3), rng.uniform(0.95, 1.1)])
            a = _hsv(rng, (0, 360), (0.15, 0.6), (0.55, 0.95))
            b = _hsv(rng, (0, 360), (0.2, 0.7), (0.35, 0.8))
            row = _surface(BED, PAT_FABRIC, a, b, rng.uniform(0.08, 0.2), rng.uniform(0, 50))
        elif kind == 2:
            half = np.array([rng.uniform(0.12, 0.35), rng.uniform(0.1, 0.3),
                             rng.uniform(0.12, 0.35)])
            a = _hsv(rng, (25, 40), (0.35, 0.6), (0.5, 0.8))
            b = _hsv(rng, (30, 50), (0.0, 0.3), (0.7, 0.95))
            row = _surface(BOX, PAT_CARDBOARD, a, b, rng.uniform(0.03, 0.06), rng.uniform(0, 50))
        elif kind == 3:
            radius = rng.uniform(0.12, 0.45)
            half = np.array([radius, radius, radius])
            a = _hsv(rng, (0, 360), (0.55, 0.95), (0.55, 0.95))
            b = _hsv(rng, (0, 360), (0.0, 0.95), (0.5, 1.0))
            row = _surface(OTHERPROP, PAT_BALL, a, b, float(rng.integers(2, 7)),
                           rng.uniform(0, 50))
        else:
            radius, half_h = rng.uniform(0.12, 0.4), rng.uniform(0.2, 0.6)
            half = np.array([radius, half_h, radius])
            if rng.random() < 0.6:
                a = _hsv(rng, (180, 240), (0.0, 0.12), (0.3, 0.75))
            else:
                a = _hsv(rng, (0, 360), (0.4, 0.85), (0.4, 0.85))
            row = _surface(OTHERFURNITURE, PAT_METAL, a, a * 0.7, 1.0, rng.uniform(0, 50))
        footprint = math.hypot(half[0], half[2])
        placed = None
        for _ in range(20):
            if against_wall:
                wall = rng.integers(0, 4)
                origin, along, inward, length = _wall_frame(wall, size_x, size_z)
                if length < 2 * half[0] + 0.2:
                    continue
                pos = origin + along * rng.uniform(half[0] + 0.05, length - half[0] - 0.05) \
                    + inward * (half[2] + 0.01)
                obj_yaw = _wall_yaw(inward)
                radius = max(half[0], half[2])
                if placer.free(pos[0], pos[1], radius * 0.9, 0.0):
                    placed = (pos, obj_yaw, radius)
                    break
            else:
                angle = yaw + rng.uniform(-0.6, 0.6)
                dist = rng.uniform(1.0, 5.5)
                pos = camera_pos[[0, 2]] + dist * np.array([math.sin(angle), math.cos(angle)])
                if placer.free(pos[0], pos[1], footprint, footprint + 0.05):
                    placed = (pos, rng.uniform(0, 2 * math.pi), footprint)
                    break
        if placed is None:
            continue
        pos, obj_yaw, radius = placed
        placer.add(pos[0], pos[1], radius)
        centre = np.array([pos[0], half[1], pos[1]])
        if kind <= 2:
            boxes.append((centre, half, obj_yaw, row))
        elif kind == 3:
            spheres.append((centre, half, 0.0, row))
        else:
            cylinders.append((centre, half, 0.0, row))
    return boxes, spheres, cylinders


def sample_scene(seed):
    """Parameters of scene ``seed`` (a dict of NumPy arrays; independent of resolution)."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f'scene seeds are non-negative integers, got {seed}')
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    size_x, size_z, height = rng.uniform(3.5, 8.0), rng.uniform(3.5, 8.0), rng.uniform(2.5, 3.2)
    cam_pos, yaw, pitch, roll = _camera(rng, size_x, size_z)
    rotation = camera_rotation(yaw, pitch, roll)
    placer = _Placer(size_x, size_z, cam_pos[[0, 2]])
    forward_xz = np.array([math.sin(yaw), math.cos(yaw)])
    wall_boxes = _wall_objects(rng, size_x, size_z, height, cam_pos, forward_xz, placer)
    boxes, spheres, cylinders = _floor_objects(rng, size_x, size_z, cam_pos, yaw, placer)
    boxes = wall_boxes + boxes
    light = np.array([rng.uniform(0.25, 0.75) * size_x, height - rng.uniform(0.3, 0.7),
                      rng.uniform(0.25, 0.75) * size_z])

    def pack(items):
        centre = np.array([i[0] for i in items], dtype=np.float32).reshape(-1, 3)
        half = np.array([i[1] for i in items], dtype=np.float32).reshape(-1, 3)
        yaw_ = np.array([i[2] for i in items], dtype=np.float32).reshape(-1)
        rows = np.array([i[3] for i in items], dtype=np.float32).reshape(-1, _COLS)
        return centre, half, yaw_, rows

    packed = {name: pack(items) for name, items in
              (('box', boxes), ('sphere', spheres), ('cylinder', cylinders))}
    surfaces = np.concatenate([np.stack(_room_styles(rng))]
                              + [packed[k][3] for k in ('box', 'sphere', 'cylinder')])
    return {
        'seed': seed,
        'room': np.array([size_x, height, size_z], dtype=np.float32),
        'cam_pos': cam_pos.astype(np.float32),
        'rotation': rotation.astype(np.float32),
        'light': light.astype(np.float32),
        'light_power': np.float32(rng.uniform(2.5, 5.0)),
        'ambient': np.float32(rng.uniform(0.25, 0.45)),
        'light_colour': _hsv(rng, (25, 45), (0.0, 0.25), (1.0, 1.0)).astype(np.float32),
        'brightness': np.float32(rng.uniform(0.38, 0.55)),
        'surfaces': surfaces.astype(np.float32),
        **{f'{k}_{field}': packed[k][i] for k in ('box', 'sphere', 'cylinder')
           for i, field in enumerate(('centre', 'half', 'yaw'))},
    }


def collate_scenes(scenes, device='cpu'):
    """Stack scene dicts into padded batch tensors on ``device``."""
    batch = len(scenes)
    out = {}
    for key in ('room', 'cam_pos', 'rotation', 'light', 'light_colour'):
        out[key] = torch.as_tensor(np.stack([s[key] for s in scenes]), device=device)
    for key in ('light_power', 'ambient', 'brightness'):
        out[key] = torch.as_tensor(np.array([s[key] for s in scenes], dtype=np.float32),
                                   device=device)
    out['seed'] = [s['seed'] for s in scenes]
    n_surf = max(len(s['surfaces']) for s in scenes)
    surfaces = np.zeros((batch, n_surf, _COLS), dtype=np.float32)
    offset = {}
    for kind in ('box', 'sphere', 'cylinder'):
        count = max(len(s[f'{kind}_yaw']) for s in scenes)
        centre = np.zeros((batch, count, 3), np.float32)
        half = np.ones((batch, count, 3), np.float32)
        yaw = np.zeros((batch, count), np.float32)
        valid = np.zeros((batch, count), bool)
        index = np.zeros((batch, count), np.int64)
        for b, scene in enumerate(scenes):
            n = len(scene[f'{kind}_yaw'])
            centre[b, :n], half[b, :n] = scene[f'{kind}_centre'], scene[f'{kind}_half']
            yaw[b, :n], valid[b, :n] = scene[f'{kind}_yaw'], True
            start = ROOM_SURFACES + offset.get(b, 0)
            index[b, :n] = np.arange(start, start + n)
            offset[b] = offset.get(b, 0) + n
        out[f'{kind}_centre'] = torch.as_tensor(centre, device=device)
        out[f'{kind}_half'] = torch.as_tensor(half, device=device)
        out[f'{kind}_yaw'] = torch.as_tensor(yaw, device=device)
        out[f'{kind}_valid'] = torch.as_tensor(valid, device=device)
        out[f'{kind}_index'] = torch.as_tensor(index, device=device)
    for b, scene in enumerate(scenes):
        surfaces[b, :len(scene['surfaces'])] = scene['surfaces']
    out['surfaces'] = torch.as_tensor(surfaces, device=device)
    return out


# ----------------------------------------------------------------------------- geometry
def check_focal_scale(focal_scale):
    """``focal_scale`` as a float; ValueError unless it is a positive finite number."""
    try:
        value = float(focal_scale)
    except (TypeError, ValueError):
        raise ValueError(f'focal scale must be a number, got {focal_scale!r}') from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'focal scale must be a positive number, got {focal_scale!r}')
    return value


def intrinsics_for(height, width, focal_scale=1.0):
    """(fx, fy, cx, cy) of the generator's camera at ``height`` x ``width`` pixels.

    ``focal_scale`` multiplies the focal length (the default camera has the Kinect's field
    of view); the principal point stays at the image centre.
    """
    focal = FOCAL_PER_WIDTH * width * check_focal_scale(focal_scale)
    return focal, focal, (width - 1) / 2.0, (height - 1) / 2.0


def _ray_directions(height, width, device, focal_scale=1.0):
    """Camera-frame ray directions with z = 1 (so the ray parameter is z-depth): P x 3."""
    fx, fy, cx, cy = intrinsics_for(height, width, focal_scale)
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                          torch.arange(width, device=device, dtype=torch.float32),
                          indexing='ij')
    dirs = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1)
    return dirs.reshape(-1, 3)


def _rotate_y(vec, yaw):
    """Rotate world vectors ``vec`` (..., 3) by ``-yaw`` about y (world -> object local)."""
    c, s = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    x, y, z = vec.unbind(-1)
    return torch.stack([c[..., 0] * x - s[..., 0] * z, y, s[..., 0] * x + c[..., 0] * z], -1)


def _unrotate_y(vec, yaw):
    """Inverse of ``_rotate_y`` (object local -> world)."""
    return _rotate_y(vec, -yaw)


def _safe_div(num, den):
    tiny = torch.where(den >= 0, torch.full_like(den, 1e-12), torch.full_like(den, -1e-12))
    return num / torch.where(den.abs() < 1e-12, tiny, den)


def _hit_box(origin, dirs, centre, half, yaw):
    """Slab test of a y-rotated box. origin B x P x 3 or B x 1 x 3, dirs B x P x 3.

    Returns t (inf on miss), local normal (B x P x 3), local hit point and face axis.
    """
    o = _rotate_y(origin - centre[:, None], yaw[:, None])
    d = _rotate_y(dirs, yaw[:, None])
    inv = _safe_div(torch.ones_like(d), d)
    t1 = (-half[:, None] - o) * inv
    t2 = (half[:, None] - o) * inv
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    near, axis = tmin.max(dim=-1)
    far = tmax.min(dim=-1).values
    hit = (near <= far) & (near > EPS)
    t = torch.where(hit, near, torch.full_like(near, math.inf))
    d_axis = d.gather(-1, axis[..., None])[..., 0]
    normal = torch.zeros_like(d)
    normal.scatter_(-1, axis[..., None], (-torch.sign(d_axis))[..., None])
    local = o + d * t.clamp(max=1e6)[..., None]
    return t, normal, local, axis


def _hit_sphere(origin, dirs, centre, radius):
    oc = origin - centre[:, None]
    a = (dirs * dirs).sum(-1)
    b = 2 * (dirs * oc).sum(-1)
    c = (oc * oc).sum(-1) - radius[:, None] ** 2
    disc = b * b - 4 * a * c
    root = torch.sqrt(disc.clamp(min=0))
    t = (-b - root) / (2 * a)
    hit = (disc >= 0) & (t > EPS)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    local = oc + dirs * t.clamp(max=1e6)[..., None]
    return t, local


def _hit_cylinder(origin, dirs, centre, radius, half_h):
    """Vertical finite cylinder with caps; returns t, local hit point, on-cap flag."""
    oc = origin - centre[:, None]
    ox, oy, oz = oc.unbind(-1)
    dx, dy, dz = dirs.unbind(-1)
    r2 = radius[:, None] ** 2
    h = half_h[:, None]
    a = dx * dx + dz * dz
    b = 2 * (ox * dx + oz * dz)
    c = ox * ox + oz * oz - r2
    disc = b * b - 4 * a * c
    t_side = _safe_div(-b - torch.sqrt(disc.clamp(min=0)), 2 * a)
    y_side = oy + t_side * dy
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (y_side.abs() <= h)
    t_side = torch.where(side_ok, t_side, torch.full_like(t_side, math.inf))
    cap_y = torch.where(oy > 0, h, -h).expand_as(dy)
    t_cap = _safe_div(cap_y - oy, dy)
    cx_, cz_ = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (t_cap > EPS) & (cx_ * cx_ + cz_ * cz_ <= r2)
    t_cap = torch.where(cap_ok, t_cap, torch.full_like(t_cap, math.inf))
    on_cap = t_cap < t_side
    t = torch.minimum(t_side, t_cap)
    local = oc + dirs * t.clamp(max=1e6)[..., None]
    return t, local, on_cap


def _room_hit(origin, dirs, room):
    """Exit point of rays from inside the room box: t, surface id (0..5), normal, uv, extent."""
    size = room[:, None]                                  # B x 1 x 3 (X, H, Z)
    o = origin
    t_hi = _safe_div(size - o, dirs)
    t_lo = _safe_div(-o, dirs)
    t_axis = torch.where(dirs > 0, t_hi, t_lo)
    t_axis = torch.where(dirs.abs() < 1e-12, torch.full_like(t_axis, math.inf), t_axis)
    t, axis = t_axis.min(dim=-1)
    positive = dirs.gather(-1, axis[..., None])[..., 0] > 0
    # Surface ids: y-: floor 0, y+: ceiling 1, x-: 2, x+: 3, z-: 4, z+: 5.
    surface = torch.where(axis == 1, positive.long(),
                          torch.where(axis == 0, 2 + positive.long(), 4 + positive.long()))
    normal = torch.zeros_like(dirs)
    normal.scatter_(-1, axis[..., None], torch.where(positive, -1.0, 1.0)[..., None])
    p = o + dirs * t[..., None]
    px, py, pz = p.unbind(-1)
    sx, sy, sz = [v.expand_as(px) for v in size.unbind(-1)]
    u = torch.where(axis == 1, px, torch.where(axis == 0, pz, px))
    v = torch.where(axis == 1, pz, py)
    ext_u = torch.where(axis == 1, sx, torch.where(axis == 0, sz, sx))
    ext_v = torch.where(axis == 1, sz, sy)
    return t, surface, normal, torch.stack([u, v, ext_u, ext_v], -1)


def _box_uv(local, axis, half):
    """Face coordinates (u, v from the face corner, metres) and the face extent."""
    hx, hy, hz = [h[:, None].expand_as(axis).float() for h in half.unbind(-1)]
    lx, ly, lz = local.unbind(-1)
    u = torch.where(axis == 0, lz + hz, lx + hx)
    v = torch.where(axis == 1, lz + hz, ly + hy)
    ext_u = torch.where(axis == 0, 2 * hz, 2 * hx)
    ext_v = torch.where(axis == 1, 2 * hz, 2 * hy)
    return torch.stack([u, v, ext_u, ext_v], -1)


def _trace(scene, origin, dirs, room_too=True):
    """Nearest hit of every ray: t, surface index, world normal, uv (u, v, ext_u, ext_v)."""
    batch, count = dirs.shape[:2]
    device = dirs.device
    if room_too:
        t, surface, normal, uv = _room_hit(origin, dirs, scene['room'])
        up = torch.zeros_like(t, dtype=torch.bool)
    else:
        t = torch.full((batch, count), math.inf, device=device)
        surface = torch.zeros((batch, count), dtype=torch.long, device=device)
        normal, uv = torch.zeros_like(dirs), torch.zeros(batch, count, 4, device=device)
        up = torch.zeros_like(t, dtype=torch.bool)

    def keep(t_new, valid, index, n_new, uv_new, up_new):
        nonlocal t, surface, normal, uv, up
        closer = (t_new < t) & valid[:, None]
        t = torch.where(closer, t_new, t)
        surface = torch.where(closer, index[:, None].expand_as(surface), surface)
        normal = torch.where(closer[..., None], n_new, normal)
        uv = torch.where(closer[..., None], uv_new, uv)
        up = torch.where(closer, up_new, up)

    for k in range(scene['box_yaw'].shape[1]):
        centre, half, yaw = scene['box_centre'][:, k], scene['box_half'][:, k], \
            scene['box_yaw'][:, k]
        tk, n_local, local, axis = _hit_box(origin, dirs, centre, half, yaw)
        n_world = _unrotate_y(n_local, yaw[:, None])
        keep(tk, scene['box_valid'][:, k], scene['box_index'][:, k], n_world,
             _box_uv(local, axis, half), n_world[..., 1] > 0.5)
    for k in range(scene['sphere_yaw'].shape[1]):
        centre, radius = scene['sphere_centre'][:, k], scene['sphere_half'][:, k, 0]
        tk, local = _hit_sphere(origin, dirs, centre, radius)
        n_world = local / radius[:, None, None]
        r = radius[:, None].expand_as(tk)
        ang = torch.atan2(local[..., 2], local[..., 0]) + math.pi
        uv_new = torch.stack([ang * r, local[..., 1] + r, 2 * math.pi * r, 2 * r], -1)
        keep(tk, scene['sphere_valid'][:, k], scene['sphere_index'][:, k], n_world, uv_new,
             torch.zeros_like(tk, dtype=torch.bool))
    for k in range(scene['cylinder_yaw'].shape[1]):
        centre = scene['cylinder_centre'][:, k]
        radius, half_h = scene['cylinder_half'][:, k, 0], scene['cylinder_half'][:, k, 1]
        tk, local, on_cap = _hit_cylinder(origin, dirs, centre, radius, half_h)
        radial = torch.stack([local[..., 0], torch.zeros_like(tk), local[..., 2]], -1)
        radial = radial / radius[:, None, None]
        cap_n = torch.stack([torch.zeros_like(tk), torch.sign(local[..., 1]),
                             torch.zeros_like(tk)], -1)
        n_world = torch.where(on_cap[..., None], cap_n, radial)
        r = radius[:, None].expand_as(tk)
        h = half_h[:, None].expand_as(tk)
        ang = torch.atan2(local[..., 2], local[..., 0]) + math.pi
        uv_side = torch.stack([ang * r, local[..., 1] + h, 2 * math.pi * r, 2 * h], -1)
        uv_cap = torch.stack([local[..., 0] + r, local[..., 2] + r, 2 * r, 2 * r], -1)
        keep(tk, scene['cylinder_valid'][:, k], scene['cylinder_index'][:, k], n_world,
             torch.where(on_cap[..., None], uv_cap, uv_side), on_cap & (local[..., 1] > 0))
    return t, surface, normal, uv, up


# ----------------------------------------------------------------------------- textures
def _hash(x, y, seed):
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    value = torch.sin(x * 12.9898 + y * 78.233 + seed * 37.719) * 43758.5453
    return value - torch.floor(value)


def _value_noise(x, y, seed):
    """Smooth value noise (bilinear, smoothstep) in [0, 1]."""
    xi, yi = torch.floor(x), torch.floor(y)
    xf, yf = x - xi, y - yi
    xf, yf = xf * xf * (3 - 2 * xf), yf * yf * (3 - 2 * yf)
    n00, n10 = _hash(xi, yi, seed), _hash(xi + 1, yi, seed)
    n01, n11 = _hash(xi, yi + 1, seed), _hash(xi + 1, yi + 1, seed)
    return (n00 * (1 - xf) + n10 * xf) * (1 - yf) + (n01 * (1 - xf) + n11 * xf) * yf


def _frac(x):
    return x - torch.floor(x)


def _albedo(props, uv, up):
    """Surface colour of every pixel from its pattern and face coordinates."""
    pattern = props[..., 1].round().long()
    a, b = props[..., 2:5], props[..., 5:8]
    scale, seed, count = props[..., 8], props[..., 9], props[..., 11]
    u, v, eu, ev = uv.unbind(-1)
    scale = scale.clamp(min=1e-3)
    fine = _value_noise(u * 6, v * 6, seed)
    mottle = (0.94 + 0.08 * fine)[..., None]

    def mix(c1, c2, w):
        return c1 + (c2 - c1) * w[..., None]

    out = a * mottle                                                     # PAT_PAINT
    # Tiles: checker cells of ``scale`` metres with dark grout lines.
    cu, cv = u / scale, v / scale
    checker = ((torch.floor(cu) + torch.floor(cv)) % 2)
    grout = (torch.minimum(_frac(cu), _frac(cv)) < 0.025 / scale).float()
    tiles = mix(mix(a, b, checker) * mottle, a * 0.35, grout)
    # Planks: strips of ``scale`` metres, each its own tone, with grain and seams.
    plank = torch.floor(u / scale)
    tone = _hash(plank, torch.floor(v / 1.2 + _hash(plank, plank, seed)), seed)
    grain = 0.5 + 0.5 * torch.sin(v * 25 + 4 * _value_noise(u * 8, v * 2, seed))
    planks = mix(a, b, 0.6 * tone + 0.3 * grain)
    planks = mix(planks, a * 0.3, (_frac(u / scale) < 0.04).float())
    # Ceiling: plain or panels with thin lines.
    panel = (torch.minimum(_frac(u / scale), _frac(v / scale)) < 0.02).float() * count
    ceiling = mix(a * mottle, b, panel)
    # Cabinet: ``count`` doors with dark seams and a knob, horizontal grain.
    door_u = u / eu.clamp(min=1e-3) * count
    seam = ((_frac(door_u) < 0.03) | (_frac(door_u) > 0.97)).float() * (~up).float()
    knob = ((_frac(door_u) - 0.85).abs() < 0.04) & ((v / ev.clamp(min=1e-3) - 0.75).abs() < 0.03)
    cabinet = mix(a * (0.92 + 0.1 * _value_noise(u * 3, v * 30, seed))[..., None], b,
                  torch.maximum(seam, (knob & ~up).float()))
    # Fabric (bed): woven texture, a band of colour b across the sides and the top.
    weave = 0.9 + 0.1 * torch.sin(u * 120) * torch.sin(v * 120)
    band = ((v / ev.clamp(min=1e-3) > 0.55) & (v / ev.clamp(min=1e-3) < 0.8)) | \
        (up & (v / ev.clamp(min=1e-3) > 0.3))
    fabric = mix(a, b, band.float()) * weave[..., None]
    # Cardboard (box): tan with a tape stripe over the middle.
    tape = ((u - eu / 2).abs() < scale).float()
    cardboard = mix(a * mottle, b, tape)
    # Door: panel a, frame b, a handle.
    border = torch.minimum(torch.minimum(u, eu - u), torch.minimum(v, ev - v))
    handle = ((u / eu.clamp(min=1e-3) - 0.85).abs() < 0.04) & \
        ((v / ev.clamp(min=1e-3) - 0.47).abs() < 0.015)
    door = mix(a * mottle, b * 0.6, ((border < scale) | handle).float())
    # Window: bright sky gradient a behind ``count`` mullions, frame b.
    sky = a * (0.85 + 0.15 * (v / ev.clamp(min=1e-3)))[..., None]
    mullion = ((_frac(u / eu.clamp(min=1e-3) * count) - 0.5).abs() * eu / count.clamp(min=1)
               < scale * 0.4) & (count > 1)
    window = mix(sky, b, ((border < scale) | mullion).float())
    # Picture: frame b around an abstract two-tone stripe pattern (hue offset ``count``).
    hue_shift = torch.stack([torch.cos(count * 0.0175), torch.sin(count * 0.0175),
                             -torch.cos(count * 0.0175)], -1) * 0.35
    art_w = _frac((u * 0.7 + v) / 0.12 + 2 * _value_noise(u * 3, v * 3, seed))
    art = mix(a, (1 - a + hue_shift).clamp(0.05, 0.95), (art_w > 0.5).float())
    picture = mix(art, b, (border < scale).float())
    # Ball: ``scale`` stripes around the sphere.
    stripes = (_frac(u / eu.clamp(min=1e-3) * scale) < 0.5).float()
    ball = mix(a, b, stripes) * (0.95 + 0.05 * fine)[..., None]
    # Metal/plastic cylinder: vertical streaks, darker rim.
    streak = 0.85 + 0.15 * _value_noise(u * 40, v * 0.5, seed)
    metal = a * streak[..., None]

    for pat, colour in ((PAT_TILES, tiles), (PAT_PLANKS, planks), (PAT_CEILING, ceiling),
                        (PAT_CABINET, cabinet), (PAT_FABRIC, fabric),
                        (PAT_CARDBOARD, cardboard), (PAT_DOOR, door), (PAT_WINDOW, window),
                        (PAT_PICTURE, picture), (PAT_BALL, ball), (PAT_METAL, metal)):
        out = torch.where((pattern == pat)[..., None], colour, out)
    return out.clamp(0.0, 1.0)


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
    dirs_cam = _ray_directions(height, width, device, focal_scale)        # P x 3
    dirs = torch.einsum('bij,pj->bpi', rot, dirs_cam)                     # B x P x 3
    origin = scene['cam_pos'][:, None]                                    # B x 1 x 3
    t, surface, normal, uv, up = _trace(scene, origin, dirs)
    props = _gather_rows(scene['surfaces'], surface)
    albedo = _albedo(props, uv, up)

    # Lighting: ceiling lamp with inverse-square-like falloff and hard shadows, ambient
    # stronger on up-facing surfaces, emissive windows.
    point = origin + dirs * t[..., None]
    to_light = scene['light'][:, None] - point
    dist = to_light.norm(dim=-1).clamp(min=1e-3)
    lambert = ((normal * to_light).sum(-1) / dist).clamp(min=0)
    shadow_origin = point + normal * 2e-3
    t_shadow = _trace(scene, shadow_origin, to_light, room_too=False)[0]
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
