"""Camera models a camera_info may declare: D against the model, fisheye rays, absurd K/P/R."""

import math

from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from mtdp_ros.ros.camera import (camera_info_problem, depth_camera_info,
                                 DISTORTION_COEFFICIENTS)
from mtdp_ros.ros.diagnostics import build_status, FrameStatistics
from mtdp_ros.ros.pointcloud import compute_rays

from test_ros_diagnostics import fake_engine, fake_settings, values_of


def camera(model='plumb_bob', d=(0.0,) * 5, width=64, height=48, fx=60.0, fy=60.0):
    info = CameraInfo()
    info.width, info.height = width, height
    info.distortion_model = model
    info.d = [float(v) for v in d]
    info.k = [fx, 0.0, 31.5, 0.0, fy, 23.5, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, 31.5, 0.0, 0.0, fy, 23.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


@pytest.mark.parametrize('model, count', [
    ('plumb_bob', 3), ('plumb_bob', 6), ('plumb_bob', 100), ('plumb_bob', 8),
    ('rational_polynomial', 5), ('rational_polynomial', 14), ('equidistant', 5)])
def test_d_must_match_the_distortion_model(model, count):
    problem = camera_info_problem(camera(model, [0.01] * count))
    assert problem is not None
    assert repr(model) in problem
    assert f'needs {DISTORTION_COEFFICIENTS[model]} coefficients D, got {count}' in problem
    # A rectified image ignores D: the same camera_info describes it.
    assert camera_info_problem(camera(model, [0.01] * count), rectified=True) is None


@pytest.mark.parametrize('model, count', [
    ('plumb_bob', 5), ('rational_polynomial', 8), ('equidistant', 4), ('plumb_bob', 0),
    ('', 0)])
def test_d_matching_its_model_or_empty_is_accepted(model, count):
    assert camera_info_problem(camera(model, [0.01] * count if model else [])) is None


@pytest.mark.parametrize('model, d', [('kannala_brandt', [0.1] * 4), ('fisheye', [0.1] * 4),
                                      ('', [0.1, 0.0, 0.0, 0.0, 0.0])])
def test_unknown_models_are_refused_naming_the_model(model, d):
    problem = camera_info_problem(camera(model, d))
    assert f'distortion model {model!r}' in problem and 'not supported' in problem
    with pytest.raises(ValueError, match='not supported'):
        compute_rays(camera(model, d), 64, 48)


@pytest.mark.parametrize('matrix, index', [('k', 2), ('r', 4), ('p', 3), ('p', 11)])
@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_non_finite_k_r_p_are_refused(matrix, index, bad):
    names = {'k': 'camera matrix K', 'r': 'rectification matrix R',
             'p': 'projection matrix P'}
    for rectified in (False, True):
        info = camera()
        values = list(getattr(info, matrix))
        values[index] = bad
        setattr(info, matrix, values)
        problem = camera_info_problem(info, rectified)
        assert problem is not None and names[matrix] in problem and 'NaN or inf' in problem
        # depth/camera_info never carries it, even when asked directly (for a rectified
        # image it carries P only: K comes from P, R is the identity).
        if rectified and matrix != 'p':
            out = depth_camera_info(info, Header(), 64, 48, rectified)
            assert all(math.isfinite(v) for v in [*out.k, *out.r, *out.p, *out.d])
            continue
        with pytest.raises(ValueError, match='NaN or inf'):
            depth_camera_info(info, Header(), 64, 48, rectified)


@pytest.mark.parametrize('fx, fy', [(1e30, 60.0), (60.0, 1e30), (1e-3, 60.0), (2.0, 2.0)])
def test_absurd_focal_lengths_are_refused(fx, fy):
    for rectified in (False, True):
        problem = camera_info_problem(camera(fx=fx, fy=fy), rectified)
        assert problem is not None and 'focal lengths' in problem and '64x48' in problem
    # At the frame's own size too (a camera_info of size zero describes any image).
    zero_size = camera(fx=fx, fy=fy, width=0, height=0)
    assert camera_info_problem(zero_size) is None
    with pytest.raises(ValueError, match='focal lengths'):
        compute_rays(zero_size, 64, 48)


def test_sane_extremes_and_an_absurd_principal_point():
    assert camera_info_problem(camera(fx=0.05 * 64, fy=0.05 * 64)) is None
    assert camera_info_problem(camera(fx=1000.0 * 64, fy=1000.0 * 64)) is None
    info = camera()
    info.k = [60.0, 0.0, 1e9, 0.0, 60.0, 23.5, 0.0, 0.0, 1.0]
    assert 'principal point' in camera_info_problem(info)


def fisheye_project(x, y, k, fx, fy, cx, cy):
    """OpenCV's fisheye (equidistant) model, forward: normalised ray -> pixel."""
    r = np.hypot(x, y)
    theta = np.arctan(r)
    theta_d = theta * (1 + k[0] * theta ** 2 + k[1] * theta ** 4 + k[2] * theta ** 6
                       + k[3] * theta ** 8)
    scale = np.where(r > 0, theta_d / np.maximum(r, 1e-12), 1.0)
    return fx * x * scale + cx, fy * y * scale + cy


def test_equidistant_rays_use_the_fisheye_model():
    width, height = 64, 48
    k = (0.05, -0.01, 0.002, -0.0005)
    info = camera('equidistant', k, fx=30.0, fy=30.0)   # corners 1.3 rad off the axis
    rays = compute_rays(info, width, height).astype(np.float64)
    assert np.isfinite(rays).all()
    us, vs = np.meshgrid(np.arange(width), np.arange(height))
    u, v = fisheye_project(rays[..., 0], rays[..., 1], k, 30.0, 30.0, 31.5, 23.5)
    assert np.abs(u - us).max() < 1e-3 and np.abs(v - vs).max() < 1e-3
    # Not the pinhole rays of K (what an equidistant camera was run as before).
    assert abs(rays[0, 0, 0] - (0 - 31.5) / 30.0) > 0.1


def test_fisheye_pixels_beyond_90_degrees_have_no_ray():
    # fx = 10 px: a pixel 16 px from the centre is 1.6 rad > pi / 2 from the axis.
    info = camera('equidistant', (0.0,) * 4, fx=10.0, fy=10.0)
    rays = compute_rays(info, 64, 48)
    assert np.isnan(rays[23, 0]).all() and np.isnan(rays[0, 0]).all()
    assert np.isfinite(rays[23, 31]).all() and np.isfinite(rays[23, 20]).all()


def test_diagnostics_say_why_camera_info_was_refused():
    problem = camera_info_problem(camera('plumb_bob', [0.1] * 3))
    assert 'needs 5 coefficients D, got 3' in problem
    statistics = FrameStatistics()
    statistics.activated()
    status = build_status('n', 'active', statistics, fake_engine(), fake_settings(),
                          camera_info_problem=problem)
    assert status.level == DiagnosticStatus.WARN
    assert status.message.startswith('camera_info refused: ')
    assert 'got 3' in values_of(status)['camera_info_problem']
    status = build_status('n', 'active', statistics, fake_engine(), fake_settings(),
                          camera_info_problem=None)
    assert 'camera_info_problem' not in values_of(status)
