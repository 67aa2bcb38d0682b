"""Camera geometry from sensor_msgs/CameraInfo: which intrinsics apply to an image.

A camera driver publishes K and D for its raw image (``image_raw``), and R and P for the
rectified image that image_proc makes from it (``image_rect``). The node is told which one
it gets with ``camera.rectified``, as image_geometry / depth_image_proc decide it:

- ``rectified`` false (the default): the image is the raw one, distorted by D; pixels map
  to rays through K and the inverse of D.
- ``rectified`` true: the image is already undistorted and rectified; pixels map to rays
  through P (fx = P[0], fy = P[5], cx = P[2], cy = P[6]) and D is ignored (undistorting
  again would bend straight lines the other way).

The depth image has the input image's size and geometry, so :func:`depth_camera_info`
describes it with the input's own calibration: the input camera_info as it is when
unrectified (depth is registered to the distorted image: consumers must undistort with D
as they would the input), or, when rectified, zero D, K taken from P and R the identity.
"""

import math

import numpy as np
from sensor_msgs.msg import CameraInfo

from mtdp_ros.runtime.camera_geometry import scale_intrinsics

# Distortion models whose coefficients the point cloud undoes (OpenCV's model).
UNDISTORTED_MODELS = ('plumb_bob', 'rational_polynomial')


def camera_info_problem(info: CameraInfo, rectified=False):
    """Why ``info`` cannot describe the image (a sentence), or None when it can.

    Checks what the node uses: D must be finite (NaN or inf coefficients give an all-NaN
    cloud), and K, or P when ``rectified``, must have finite, positive focal lengths.
    """
    distortion = [float(d) for d in info.d]
    if not all(math.isfinite(d) for d in distortion):
        return (f'camera_info distortion coefficients D contain NaN or inf '
                f'(D = {distortion}); fix the camera calibration')
    try:
        camera_matrix(info, info.width or 1, info.height or 1, rectified)
    except ValueError as exc:
        return str(exc)
    return None


def _focal_centre(info: CameraInfo, rectified):
    if rectified:
        p = [float(v) for v in info.p]
        values, source = (p[0], p[5], p[2], p[6]), 'projection matrix P'
    else:
        k = [float(v) for v in info.k]
        values, source = (k[0], k[4], k[2], k[5]), 'camera matrix K'
    fx, fy, cx, cy = values
    if not (all(math.isfinite(v) for v in values) and fx > 0 and fy > 0):
        hint = ' (camera.rectified is true: the rectified image needs P)' if rectified else ''
        raise ValueError(f'camera_info has no usable {source} (fx={fx}, fy={fy}, cx={cx}, '
                         f'cy={cy}){hint}')
    return values


def _scales(info: CameraInfo, width, height):
    # A camera_info with a zero size is taken to describe the image as it is.
    return (width / info.width if info.width else 1.0,
            height / info.height if info.height else 1.0)


def camera_matrix(info: CameraInfo, width, height, rectified=False):
    """(fx, fy, cx, cy) that apply to an image of ``width`` x ``height`` described by ``info``.

    From K (``rectified`` false) or P (true). A camera_info whose size differs from the
    image's (a resized stream) is scaled; one with a zero size is taken to describe the
    image as it is. ValueError naming the matrix when it is unusable.
    """
    fx, fy, cx, cy = _focal_centre(info, rectified)
    scale_x, scale_y = _scales(info, width, height)
    return scale_intrinsics((fx, fy, cx, cy), (scale_y, scale_x))


def _scaled_matrix(values, rows, cols, scale_x, scale_y):
    """A row-major K (3 x 3) or P (3 x 4) resampled to another image size."""
    matrix = np.asarray(values, dtype=np.float64).reshape(rows, cols).copy()
    if scale_x == 1.0 and scale_y == 1.0:
        return matrix
    # Pixel coordinates scale about the image corner (-0.5): u' = s u + (s - 1) / 2. In
    # homogeneous form that adds (s - 1) / 2 times the last row to the pixel rows.
    matrix[0] = matrix[0] * scale_x + 0.5 * (scale_x - 1.0) * matrix[2]
    matrix[1] = matrix[1] * scale_y + 0.5 * (scale_y - 1.0) * matrix[2]
    return matrix


def depth_camera_info(info: CameraInfo, header, width, height, rectified=False) -> CameraInfo:
    """The CameraInfo of a depth image of ``width`` x ``height`` made from the camera's image.

    Same header and size as the depth image. ``rectified`` false: the input's K, D, R, P
    and distortion model as they are (depth is registered to the unrectified input).
    ``rectified`` true: D zero (``plumb_bob``), K from P, R the identity, P as it is. K and
    P are rescaled when the input camera_info describes another resolution.
    """
    scale_x, scale_y = _scales(info, width, height)
    out = CameraInfo()
    out.header = header
    out.width, out.height = int(width), int(height)
    p = _scaled_matrix(info.p, 3, 4, scale_x, scale_y)
    if rectified:
        camera_matrix(info, width, height, rectified=True)          # P must be usable
        out.distortion_model = 'plumb_bob'
        out.d = [0.0] * 5
        out.k = [float(v) for v in p[:, :3].reshape(-1)]
        out.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    else:
        out.distortion_model = info.distortion_model
        out.d = [float(v) for v in info.d]
        out.k = [float(v) for v in _scaled_matrix(info.k, 3, 3, scale_x, scale_y).reshape(-1)]
        out.r = [float(v) for v in info.r]
    out.p = [float(v) for v in p.reshape(-1)]
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    out.roi = info.roi
    return out


class FocalCorrection:
    """The intrinsics the node hands to ``engine.infer`` for camera-aware metric depth.

    ``enabled`` (parameter ``depth.focal_correction``): without it, or before any
    camera_info has arrived, depth stays as the network predicts it; ``say`` (a log
    function) is told that once, naming ``info_topic``. ``rectified``: K (false) or P.
    """

    def __init__(self, enabled, rectified, info_topic, say):
        self.enabled = bool(enabled)
        self.rectified = bool(rectified)
        self._info_topic = info_topic
        self._say = say
        self._said_missing = False

    def intrinsics(self, camera_info, width, height):
        """(fx, fy, cx, cy) for an image of ``width`` x ``height``, or None: no correction."""
        if not self.enabled:
            return None
        if camera_info is None:
            if not self._said_missing:
                self._say(f'no camera_info on {self._info_topic} yet: depth is not corrected '
                          f'for the camera focal length (depth.focal_correction) until one '
                          f'arrives')
                self._said_missing = True
            return None
        return camera_matrix(camera_info, width, height, self.rectified)
