"""Scene parameters of the synthetic rooms, drawn on the CPU with NumPy from a seed alone.

A seed gives one room (floor, four walls, ceiling) with furniture-like primitives (boxes,
spheres, vertical cylinders), wall-mounted panels (doors, windows, pictures), surface
styles and a camera at a person's eye height: the same scene on any device and at any
resolution. :mod:`.synthetic` renders it (see there for the labels).
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
