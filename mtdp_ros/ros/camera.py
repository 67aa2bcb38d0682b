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
from mtdp_ros.runtime.postprocess import check_focal_correction

# Distortion models and their number of coefficients D (sensor_msgs/distortion_models.hpp):
# plumb_bob k1 k2 p1 p2 k3 and rational_polynomial k1 k2 p1 p2 k3 k4 k5 k6 are OpenCV's
# pinhole model (cv2.undistortPoints); equidistant k1..k4 is OpenCV's fisheye model
# (cv2.fisheye.undistortPoints). An empty D means no distortion.
DISTORTION_COEFFICIENTS = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}
# The pinhole-family models the point cloud undoes with cv2.undistortPoints.
UNDISTORTED_MODELS = ('plumb_bob', 'rational_polynomial')
FISHEYE_MODEL = 'equidistant'
# Sane focal lengths, as a multiple of the image's larger side: 0.05 is a 169 degree pinhole
# field of view (a 360 degree equidistant fisheye has 0.16), 1000 a 0.06 degree one. Outside
# lies a calibration error (fx = 1e30 made depth 1e27 m).
FOCAL_RANGE = (0.05, 1000.0)
# The principal point may lie off the image (an off-centre crop), within this many image
# sizes of its centre.
PRINCIPAL_POINT_RANGE = 10.0


def _finite(values):
    return all(math.isfinite(float(v)) for v in values)


def _distortion_problem(info: CameraInfo):
    """Why D and the distortion model cannot describe the raw image, or None."""
    model = info.distortion_model
    count = len(info.d)
    if model in DISTORTION_COEFFICIENTS:
        expected = DISTORTION_COEFFICIENTS[model]
        if count not in (0, expected):
            return (f'camera_info distortion model {model!r} needs {expected} coefficients D, '
                    f'got {count}; fix the camera calibration')
        return None
    if not model and not any(float(d) for d in info.d):
        return None                                # uncalibrated: no distortion
    known = ', '.join(DISTORTION_COEFFICIENTS)
    return (f'camera_info distortion model {model!r} (D of {count} coefficients) is not '
            f'supported: one of {known}, or set camera.rectified for a rectified image')


def camera_info_problem(info: CameraInfo, rectified=False):
    """Why ``info`` cannot describe the image (a sentence), or None when it can.

    Checks what the node uses and republishes: D must be finite (NaN or inf coefficients
    give an all-NaN cloud) and, for the raw image (``rectified`` false), match the
    distortion model (:data:`DISTORTION_COEFFICIENTS`; an unknown model is refused, not
    run as a pinhole); K, R and P must be finite (depth/camera_info republishes them); the
    focal lengths of K, or of P when ``rectified``, must be positive and within
    :data:`FOCAL_RANGE` of the image size, and the principal point near the image.
    """
    distortion = [float(d) for d in info.d]
    if not _finite(distortion):
        return (f'camera_info distortion coefficients D contain NaN or inf '
                f'(D = {distortion}); fix the camera calibration')
    if not rectified:
        problem = _distortion_problem(info)
        if problem:
            return problem
    for name, values in (('camera matrix K', info.k), ('rectification matrix R', info.r),
                         ('projection matrix P', info.p)):
        if not _finite(values):
            return (f'camera_info {name} contains NaN or inf ({name[-1]} = '
                    f'{[float(v) for v in values]}); fix the camera calibration')
    try:
        camera_matrix(info, info.width or 1, info.height or 1, rectified,
                      check_range=bool(info.width and info.height))
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
    return values, source


def _check_range(values, source, width, height):
    """Raise ValueError when focal lengths or principal point are absurd for the image size."""
    fx, fy, cx, cy = values
    side = max(width, height)
    low, high = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    if not (low <= fx <= high and low <= fy <= high):
        raise ValueError(f'camera_info {source} has focal lengths fx={fx:g}, fy={fy:g} px, '
                         f'outside {low:g}..{high:g} px for a {width}x{height} image '
                         f'({FOCAL_RANGE[0]:g} to {FOCAL_RANGE[1]:g} times its larger side); '
                         f'fix the camera calibration')
    reach = PRINCIPAL_POINT_RANGE
    if abs(cx - width / 2) > reach * width or abs(cy - height / 2) > reach * height:
        raise ValueError(f'camera_info {source} has its principal point ({cx:g}, {cy:g}) more '
                         f'than {reach:g} image sizes from a {width}x{height} image\'s '
                         f'centre; fix the camera calibration')


def _scales(info: CameraInfo, width, height):
    # A camera_info with a zero size is taken to describe the image as it is.
    return (width / info.width if info.width else 1.0,
            height / info.height if info.height else 1.0)


def camera_matrix(info: CameraInfo, width, height, rectified=False, check_range=True):
    """(fx, fy, cx, cy) that apply to an image of ``width`` x ``height`` described by ``info``.

    From K (``rectified`` false) or P (true). A camera_info whose size differs from the
    image's (a resized stream) is scaled; one with a zero size is taken to describe the
    image as it is. ValueError naming the matrix when it is unusable, or (``check_range``)
    absurd for the image size.
    """
    (fx, fy, cx, cy), source = _focal_centre(info, rectified)
    scale_x, scale_y = _scales(info, width, height)
    values = scale_intrinsics((fx, fy, cx, cy), (scale_y, scale_x))
    if check_range:
        _check_range(values, source, width, height)
    return values


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
    if not all(_finite(values) for values in (out.k, out.d, out.r, out.p)):
        # camera_info_problem refuses such a camera_info; never republish NaN or inf.
        raise ValueError('the camera_info holds NaN or inf in K, D, R or P')
    return out


class FocalCorrection:
    """The intrinsics the node hands to ``engine.infer`` for camera-aware metric depth.

    ``mode`` (parameter ``depth.focal_correction``): ``'canonical'``, ``'scale'`` or
    ``'off'`` (true and false: the default and off; see ``Engine.infer``), handed to
    ``engine.infer`` as ``focal_correction``. Off, or before any camera_info has arrived,
    depth stays as the network predicts it; ``say`` (a log function) is told that once,
    naming ``info_topic``. ``rectified``: K (false) or P.
    """

    def __init__(self, mode, rectified, info_topic, say):
        self.mode = check_focal_correction(mode)
        self.enabled = self.mode != 'off'
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
