"""sensor_msgs/PointCloud2 from a depth image and the camera's CameraInfo.

Depth is the distance along the optical axis (z), as in NYUD-v2 and the model's output.
Each pixel (u, v) of the depth image becomes the point ``z * ray(u, v)`` in the camera
optical frame (x right, y down, z forward). For an unrectified input (the default) the ray
comes from the camera matrix K and the distortion coefficients D: OpenCV's pinhole model for
``plumb_bob`` / ``rational_polynomial``, its fisheye model for ``equidistant`` (the depth
image has the raw camera image's geometry, so pixels are undistorted). For a rectified input
(``rectified=True``, ``image_rect``) it comes from the projection matrix P, and D is
ignored, as image_geometry does (see :mod:`mtdp_ros.ros.camera`). The rays depend only on
the camera and are cached.

The cloud is organised (height x width of the possibly decimated depth image), with NaN
points where depth is invalid (``is_dense`` false), and fields ``x``, ``y``, ``z``
(float32) and ``rgb`` (the usual packed ``0x00RRGGBB`` stored in a float32, which RViz and
PCL read).
"""

import array

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

from mtdp_ros.ros.camera import (camera_info_problem, camera_matrix, FISHEYE_MODEL,
                                 UNDISTORTED_MODELS)

POINT_FIELDS = (('x', 0), ('y', 4), ('z', 8), ('rgb', 12))
POINT_STEP = 16
__all__ = ['RayCache', 'UNDISTORTED_MODELS', 'camera_matrix', 'cloud_msg_to_numpy',
           'compute_rays', 'depth_to_points', 'pack_rgb', 'points_to_msg', 'unpack_rgb']


class RayCache:
    """Unit-depth rays (x/z, y/z) per pixel for one camera and image size, recomputed on change."""

    def __init__(self):
        self._key = None
        self._rays = None

    def rays(self, info: CameraInfo, width, height, stride=1, rectified=False):
        """float32 (H/stride) x (W/stride) x 2 rays for the pixels ``[::stride, ::stride]``."""
        distortion = tuple(float(d) for d in info.d)
        model = info.distortion_model
        key = (tuple(info.k), tuple(info.p), distortion, model, info.width, info.height,
               width, height, stride, bool(rectified))
        if key != self._key:
            self._rays = compute_rays(info, width, height, stride, rectified)
            self._key = key
        return self._rays


def compute_rays(info: CameraInfo, width, height, stride=1, rectified=False):
    """Rays (x/z, y/z) of the pixel centres ``[::stride, ::stride]`` of a width x height image.

    ``rectified`` false: through K, undoing D; true: through P, D ignored. ValueError
    naming the problem for a camera_info that cannot give rays (non-finite D, unusable
    K or P).
    """
    problem = camera_info_problem(info, rectified)
    if problem:
        raise ValueError(problem)
    fx, fy, cx, cy = camera_matrix(info, width, height, rectified)
    us = np.arange(0, width, stride, dtype=np.float64)
    vs = np.arange(0, height, stride, dtype=np.float64)
    grid_u, grid_v = np.meshgrid(us, vs)
    distortion = np.asarray(info.d, dtype=np.float64)
    if not rectified and info.distortion_model == FISHEYE_MODEL:
        return _fisheye_rays(grid_u, grid_v, (fx, fy, cx, cy), distortion)
    if not rectified and info.distortion_model in UNDISTORTED_MODELS and distortion.size \
            and np.any(distortion):
        matrix = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        pixels = np.stack([grid_u, grid_v], axis=-1).reshape(-1, 1, 2)
        normalised = cv2.undistortPoints(pixels, matrix, distortion)
        return normalised.reshape(grid_u.shape + (2,)).astype(np.float32)
    rays = np.empty(grid_u.shape + (2,), np.float32)
    rays[..., 0] = (grid_u - cx) / fx
    rays[..., 1] = (grid_v - cy) / fy
    return rays


def _fisheye_rays(grid_u, grid_v, intrinsics, distortion):
    """Rays of an equidistant (OpenCV fisheye) camera; NaN for pixels beyond 90 degrees.

    The model maps a ray at angle theta from the axis to the normalised radius
    theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), even with zero
    k (it is not a pinhole). A pixel whose theta_d exceeds the one at 90 degrees sees no
    point in front of the camera that a depth (z) can place: its ray is NaN.
    """
    fx, fy, cx, cy = intrinsics
    k = np.zeros(4) if distortion.size == 0 else distortion[:4]
    matrix = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    pixels = np.stack([grid_u, grid_v], axis=-1).reshape(-1, 1, 2)
    rays = cv2.fisheye.undistortPoints(pixels, matrix, k).reshape(grid_u.shape + (2,))
    half_pi = np.pi / 2
    theta_d_max = half_pi * (1 + k[0] * half_pi ** 2 + k[1] * half_pi ** 4
                             + k[2] * half_pi ** 6 + k[3] * half_pi ** 8)
    theta_d = np.hypot((grid_u - cx) / fx, (grid_v - cy) / fy)
    rays[theta_d >= theta_d_max] = np.nan
    return rays.astype(np.float32)


def pack_rgb(rgb):
    """uint8 ... x 3 RGB -> float32 of the same leading shape holding 0x00RRGGBB."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    packed = ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
              | rgb[..., 2].astype(np.uint32))
    return packed.view(np.float32)


def depth_to_points(depth, rays, colors=None, stride=1):
    """float32 (H/stride) x (W/stride) x 4 array of x, y, z, packed rgb.

    ``depth``: H x W metres (NaN invalid); ``rays`` from :class:`RayCache` with the same
    stride; ``colors``: H x W x 3 uint8 RGB or None (white).
    """
    z = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    if z.shape != rays.shape[:2]:
        raise ValueError(f'depth of {z.shape} does not match rays of {rays.shape[:2]}')
    # Zero, negative and infinite depth is no measurement (NaN compares false: stays NaN).
    z = np.where((z > 0) & (z < np.inf), z, np.float32(np.nan))
    if colors is None:
        packed = np.full(z.shape, pack_rgb(np.array([255, 255, 255], np.uint8)), np.float32)
    else:
        packed = pack_rgb(np.asarray(colors)[::stride, ::stride])
    # Planes computed contiguously, then interleaved in one pass (cv2.merge).
    return cv2.merge([np.ascontiguousarray(rays[..., 0]) * z,
                      np.ascontiguousarray(rays[..., 1]) * z, z, packed])


def points_to_msg(points, header) -> PointCloud2:
    """An organised PointCloud2 from an H x W x 4 float32 array (x, y, z, packed rgb)."""
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(points.shape[0]), int(points.shape[1])
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in POINT_FIELDS]
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * msg.width
    msg.is_dense = False
    data = array.array('B')
    data.frombytes(memoryview(np.ascontiguousarray(points, dtype='<f4')).cast('B'))
    msg.data = data
    return msg


def cloud_msg_to_numpy(msg: PointCloud2):
    """H x W x 4 float32 (x, y, z, packed rgb) of a cloud written by :func:`points_to_msg`."""
    names = [field.name for field in msg.fields]
    if names != [name for name, _ in POINT_FIELDS] or msg.point_step != POINT_STEP:
        raise ValueError(f'not an x, y, z, rgb float32 cloud: fields {names}')
    values = np.frombuffer(msg.data, dtype='>f4' if msg.is_bigendian else '<f4')
    return values.astype(np.float32).reshape(msg.height, msg.width, 4)


def unpack_rgb(packed):
    """Inverse of :func:`pack_rgb`: float32 ... -> uint8 ... x 3."""
    bits = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(
        np.uint8)
