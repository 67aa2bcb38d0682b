"""Ray casting and procedural textures of the synthetic rooms (batched PyTorch).

The pinhole camera's rays (``intrinsics_for``: the Kinect's field of view of NYUD-v2,
times ``focal_scale``), their intersections with boxes, spheres, vertical cylinders and
the room, and the procedural albedo of every surface. :mod:`.synthetic` shades and labels
the hits.
"""

import math

import torch

from .scene_sampling import (EPS, FOCAL_PER_WIDTH, PAT_BALL, PAT_CABINET, PAT_CARDBOARD,
                             PAT_CEILING, PAT_DOOR, PAT_FABRIC, PAT_METAL, PAT_PICTURE,
                             PAT_PLANKS, PAT_TILES, PAT_WINDOW)


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


def ray_directions(height, width, device, focal_scale=1.0):
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


def trace(scene, origin, dirs, room_too=True):
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


def surface_albedo(props, uv, up):
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
