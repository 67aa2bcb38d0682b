"""Synthetic video: a camera moving through the procedural rooms, labels for every frame.

``render_sequence(seed, length, height, width, motion)`` renders ``length`` frames of room
``seed`` (the scenes of :mod:`.synthetic`) with exact labels per frame. Motions:

* ``static``: a fixed camera; every frame has its own sensor noise, and the lamp's power
  and the exposure target jitter (about 3 % and 2 %, one standard deviation);
* ``slow``: the same jitter, and the camera pans by 0.4 degrees a frame (12 deg/s at
  30 fps) and dollies back and forth along its view (+-0.10 m, period 60 frames);
* ``fast``: 2.5 degrees a frame of pan, +-3 degrees of tilt (period 16 frames), +-0.25 m
  of dolly (period 20 frames), and a scene cut in the middle: from frame ``length // 2``
  on, another room (seed + ``CUT_SEED_OFFSET``) is seen, moving the same way.

Translations stay within the 0.45 m the scene generator keeps free around its camera, so
the camera never enters furniture. Everything is a function of ``seed``, ``motion`` and
the frame index: the same call gives the same frames on one device.
"""

import math

import numpy as np
import torch

from .synthetic import (_check_size, check_focal_scale, collate_scenes, render_params,
                        sample_scene)

MOTIONS = ('static', 'slow', 'fast')
# The room after a cut in ``fast`` sequences is scene seed + this offset.
CUT_SEED_OFFSET = 1_000_003
# Per-motion camera paths: pan (deg/frame), tilt amplitude (deg) and period (frames),
# dolly amplitude (m) and period (frames), and whether the middle frame cuts to a new room.
PATHS = {
    'static': dict(pan=0.0, tilt=0.0, tilt_period=1, dolly=0.0, dolly_period=1, cut=False),
    'slow': dict(pan=0.4, tilt=0.0, tilt_period=1, dolly=0.10, dolly_period=60, cut=False),
    'fast': dict(pan=2.5, tilt=3.0, tilt_period=16, dolly=0.25, dolly_period=20, cut=True),
}
LIGHT_JITTER = 0.03
EXPOSURE_JITTER = 0.02


def check_motion(motion):
    """``motion`` if it is one of :data:`MOTIONS`; ValueError naming the choices."""
    if motion not in MOTIONS:
        raise ValueError(f'motion must be one of {MOTIONS}, got {motion!r}')
    return motion


def cut_frame(length, motion):
    """Index of the first frame after the scene cut, or None (no cut in ``motion``)."""
    return length // 2 if PATHS[check_motion(motion)]['cut'] and length >= 2 else None


def _pan(rotation, angle):
    """Rotate a camera-to-world rotation about the world's vertical axis (a pan)."""
    c, s = math.cos(angle), math.sin(angle)
    about_y = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)
    return about_y @ rotation


def _tilt(rotation, angle):
    """Rotate a camera-to-world rotation about the camera's own x axis (a tilt)."""
    c, s = math.cos(angle), math.sin(angle)
    about_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)
    return rotation @ about_x


def frame_scene(scene, frame, motion, noise_seed, rng):
    """Scene parameters of frame ``frame``: the camera moved, the light jittered."""
    path = PATHS[motion]
    rotation = scene['rotation'].astype(np.float64)
    rotation = _pan(rotation, math.radians(path['pan'] * frame))
    tilt = path['tilt'] * math.sin(2 * math.pi * frame / path['tilt_period'])
    rotation = _tilt(rotation, math.radians(tilt))
    forward = scene['rotation'][:, 2].astype(np.float64)
    horizontal = np.array([forward[0], 0.0, forward[2]])
    horizontal /= max(np.linalg.norm(horizontal), 1e-9)
    dolly = path['dolly'] * math.sin(2 * math.pi * frame / path['dolly_period'])
    out = dict(scene)
    out['cam_pos'] = (scene['cam_pos'] + dolly * horizontal).astype(np.float32)
    out['rotation'] = rotation.astype(np.float32)
    out['light_power'] = np.float32(scene['light_power'] * (1 + LIGHT_JITTER * rng.normal()))
    out['brightness'] = np.float32(scene['brightness'] * (1 + EXPOSURE_JITTER * rng.normal()))
    # render_params draws the sensor noise from 'seed': a new draw for every frame.
    out['seed'] = noise_seed
    return out


def sequence_scenes(seed, length, motion):
    """Per-frame scene parameters and the room seed of every frame."""
    check_motion(motion)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f'sequence seeds are non-negative integers, got {seed}')
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f'sequence length must be a positive integer, got {length!r}')
    cut = cut_frame(length, motion)
    rooms = {seed: sample_scene(seed)}
    if cut is not None:
        rooms[seed + CUT_SEED_OFFSET] = sample_scene(seed + CUT_SEED_OFFSET)
    rng = np.random.default_rng(np.random.SeedSequence([seed, MOTIONS.index(motion), 0x71DE0]))
    frames, room_seeds = [], []
    for frame in range(length):
        room = seed if cut is None or frame < cut else seed + CUT_SEED_OFFSET
        local = frame if cut is None or frame < cut else frame - cut
        noise_seed = (seed * 100_003 + frame * 7_919 + 1) % (2 ** 31)
        frames.append(frame_scene(rooms[room], local, motion, noise_seed, rng))
        room_seeds.append(room)
    return frames, room_seeds


def render_sequence(seed, length, height, width, motion='slow', device='cpu', focal_scale=1.0,
                    batch_size=8):
    """Render ``length`` frames of sequence ``seed``; tensors with the frames as batch.

    Returns what :func:`.synthetic.render_batch` returns (``image`` L x 3 x H x W in
    [0, 1], ``semseg``, ``depth``, ``normals``, ``edge``, ``instance``, ``intrinsics``),
    plus ``room_seeds`` (the room of every frame) and ``cut`` (index of the first frame
    after the scene cut, or None). Frames render ``batch_size`` at a time.
    """
    _check_size(height, width)
    focal_scale = check_focal_scale(focal_scale)
    frames, room_seeds = sequence_scenes(seed, length, motion)
    parts = []
    for first in range(0, length, batch_size):
        chunk = frames[first:first + batch_size]
        parts.append(render_params(collate_scenes(chunk, device), height, width,
                                   focal_scale=focal_scale))
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    out['room_seeds'] = room_seeds
    out['cut'] = cut_frame(length, motion)
    return out
