"""PointCloud2 from depth and CameraInfo: geometry (K + D or P), colours, layout, checks."""

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, PointField
from std_msgs.msg import Header

from mtdp_ros.ros.camera import camera_info_problem, depth_camera_info
from mtdp_ros.ros.pointcloud import (RayCache, camera_matrix, cloud_msg_to_numpy,
                                     compute_rays, depth_to_points, pack_rgb, points_to_msg,
                                     unpack_rgb)


def pinhole(width, height, fx, fy, cx, cy, d=(), model='plumb_bob'):
    info = CameraInfo()
    info.width, info.height = width, height
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.d = list(d)
    info.distortion_model = model
    return info


def test_points_back_project_through_the_pinhole_model():
    height, width = 6, 8
    info = pinhole(width, height, fx=100.0, fy=80.0, cx=3.5, cy=2.5)
    depth = np.linspace(1.0, 3.0, height * width, dtype=np.float32).reshape(height, width)
    depth[2, 3] = np.nan
    depth[4, 4] = 0.0
    colors = np.zeros((height, width, 3), np.uint8)
    colors[..., 0] = 255
    colors[1, 1] = (1, 2, 3)
    points = depth_to_points(depth, compute_rays(info, width, height), colors)
    v, u = 5, 7
    z = depth[v, u]
    np.testing.assert_allclose(points[v, u, :3], [(u - 3.5) / 100.0 * z,
                                                  (v - 2.5) / 80.0 * z, z], rtol=1e-6)
    assert np.isnan(points[2, 3, :3]).all()
    assert np.isnan(points[4, 4, :3]).all()        # zero depth is no measurement
    bits = points[..., 3].copy().view(np.uint32)
    assert bits[0, 0] == 0xFF0000
    assert bits[1, 1] == 0x010203


def test_cloud_message_layout_is_what_rviz_reads():
    height, width = 3, 4
    info = pinhole(width, height, 50.0, 50.0, 1.5, 1.0)
    depth = np.full((height, width), 2.0, np.float32)
    header = Header(frame_id='camera_optical_frame')
    header.stamp.sec, header.stamp.nanosec = 42, 7
    msg = points_to_msg(depth_to_points(depth, compute_rays(info, width, height)), header)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (3, 4, 16, 64)
    assert msg.is_dense is False and msg.is_bigendian is False
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
        ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1)]
    assert msg.header.frame_id == 'camera_optical_frame' and msg.header.stamp.sec == 42
    # Independent decode with a structured dtype.
    records = np.frombuffer(bytes(msg.data), dtype=np.dtype(
        {'names': ['x', 'y', 'z', 'rgb'], 'formats': ['<f4'] * 4,
         'offsets': [0, 4, 8, 12], 'itemsize': 16})).reshape(height, width)
    np.testing.assert_allclose(records['z'], 2.0)
    np.testing.assert_allclose(records['x'][0], (np.arange(4) - 1.5) / 50.0 * 2.0, rtol=1e-6)
    assert np.all(records['rgb'].view(np.uint32) == 0xFFFFFF)   # no colours: white
    np.testing.assert_array_equal(cloud_msg_to_numpy(msg)[..., 2], records['z'])


def test_stride_decimates_pixels():
    height, width = 7, 9
    info = pinhole(width, height, 10.0, 10.0, 4.0, 3.0)
    depth = np.arange(height * width, dtype=np.float32).reshape(height, width) + 1.0
    rays = RayCache().rays(info, width, height, stride=2)
    points = depth_to_points(depth, rays, stride=2)
    assert points.shape == (4, 5, 4)
    np.testing.assert_array_equal(points[..., 2], depth[::2, ::2])
    np.testing.assert_allclose(points[1, 2, 0], (4 - 4.0) / 10.0 * depth[2, 4])
    np.testing.assert_allclose(points[1, 3, 0], (6 - 4.0) / 10.0 * depth[2, 6])


def test_camera_info_of_another_resolution_is_scaled():
    # A 1280 x 960 calibration used for a 640 x 480 stream: K halves (about the corner).
    info = pinhole(1280, 960, 1000.0, 1000.0, 639.5, 479.5)
    fx, fy, cx, cy = camera_matrix(info, 640, 480)
    assert (fx, fy) == (500.0, 500.0)
    assert (cx, cy) == (319.5, 239.5)
    # Zero-sized camera_info: taken as describing the image itself.
    assert camera_matrix(pinhole(0, 0, 10.0, 20.0, 3.0, 4.0), 64, 48) == (10.0, 20.0, 3.0, 4.0)


def test_unusable_camera_matrix_is_an_error():
    with pytest.raises(ValueError, match='camera matrix'):
        compute_rays(pinhole(4, 3, 0.0, 10.0, 1.0, 1.0), 4, 3)


def test_distorted_camera_rays_reproject_to_their_pixels():
    width, height = 40, 30
    k1, k2, p1, p2, k3 = -0.3, 0.1, 0.001, -0.002, 0.0
    info = pinhole(width, height, 35.0, 36.0, 19.5, 14.5, d=(k1, k2, p1, p2, k3))
    rays = compute_rays(info, width, height)
    x, y = rays[..., 0].astype(np.float64), rays[..., 1].astype(np.float64)
    # Forward plumb_bob model: the ray must land on the pixel it was computed for.
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    us, vs = np.meshgrid(np.arange(width), np.arange(height))
    assert np.abs(xd * 35.0 + 19.5 - us).max() < 1e-2
    assert np.abs(yd * 36.0 + 14.5 - vs).max() < 1e-2
    # And they differ from the pinhole rays at the corners (the distortion matters).
    assert abs(rays[0, 0, 0] - (0 - 19.5) / 35.0) > 1e-2


def test_ray_cache_recomputes_only_on_change():
    cache = RayCache()
    info = pinhole(8, 6, 10.0, 10.0, 3.5, 2.5)
    first = cache.rays(info, 8, 6)
    assert cache.rays(info, 8, 6) is first
    info.k = [20.0, 0.0, 3.5, 0.0, 20.0, 2.5, 0.0, 0.0, 1.0]
    second = cache.rays(info, 8, 6)
    assert second is not first
    np.testing.assert_allclose(second, first / 2.0, rtol=1e-6)


def test_rgb_packing_round_trips():
    rgb = np.array([[0, 0, 0], [255, 255, 255], [1, 2, 3], [200, 100, 50]], np.uint8)
    np.testing.assert_array_equal(unpack_rgb(pack_rgb(rgb)), rgb)


# ----------------------------------------------------------------------------- camera geometry
def rectified_camera(width=40, height=30):
    """A distorted camera whose rectified image has other intrinsics in P than K."""
    info = pinhole(width, height, 35.0, 36.0, 19.5, 14.5, d=(-0.3, 0.1, 0.001, -0.002, 0.0))
    info.p = [30.0, 0.0, 20.0, 0.0, 0.0, 31.0, 15.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def test_rectified_rays_come_from_p_and_ignore_d():
    info = rectified_camera()
    rays = compute_rays(info, 40, 30, rectified=True)
    # A known point: X = (0.4, -12 / 31, 2.0) projects through P to pixel (u, v) = (26, 9)
    # (30 * 0.2 + 20, 31 * -6 / 31 + 15); its depth times that pixel's ray gives it back.
    depth = np.zeros((30, 40), np.float32)
    depth[9, 26] = 2.0
    points = depth_to_points(depth, rays)
    np.testing.assert_allclose(points[9, 26, :3], [0.4, -12.0 / 31.0, 2.0], rtol=1e-6)
    us, vs = np.meshgrid(np.arange(40), np.arange(30))
    np.testing.assert_allclose(rays[..., 0], (us - 20.0) / 30.0, rtol=1e-6)
    np.testing.assert_allclose(rays[..., 1], (vs - 15.0) / 31.0, rtol=1e-6)
    # Unrectified: K and D (differs from the pinhole rays of P and of K at the corners).
    raw = compute_rays(info, 40, 30)
    assert abs(raw[0, 0, 0] - (0 - 19.5) / 35.0) > 1e-2
    assert camera_matrix(info, 40, 30, rectified=True) == (30.0, 31.0, 20.0, 15.0)
    # The cache tells the two apart.
    cache = RayCache()
    assert cache.rays(info, 40, 30, rectified=True) is not cache.rays(info, 40, 30)


def test_rectified_without_p_is_an_error_naming_p():
    info = pinhole(8, 6, 10.0, 10.0, 3.5, 2.5)          # P left all zero
    with pytest.raises(ValueError, match='projection matrix P'):
        compute_rays(info, 8, 6, rectified=True)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_distortion_is_rejected_by_name(bad):
    info = pinhole(8, 6, 10.0, 10.0, 3.5, 2.5, d=(0.1, bad, 0.0, 0.0, 0.0))
    problem = camera_info_problem(info)
    assert 'distortion coefficients D' in problem and 'NaN or inf' in problem
    with pytest.raises(ValueError, match='distortion coefficients D'):
        compute_rays(info, 8, 6)
    assert camera_info_problem(pinhole(8, 6, 10.0, 10.0, 3.5, 2.5, d=(0.1, 0, 0, 0, 0))) \
        is None


def test_depth_camera_info_unrectified_is_the_input_as_is():
    info = rectified_camera()
    info.header.frame_id = 'wrong_frame'
    header = Header(frame_id='cam_optical')
    header.stamp.sec = 5
    out = depth_camera_info(info, header, 40, 30)
    assert out.header.frame_id == 'cam_optical' and out.header.stamp.sec == 5
    assert (out.width, out.height) == (40, 30)
    assert list(out.k) == list(info.k) and list(out.d) == list(info.d)
    assert list(out.p) == list(info.p) and list(out.r) == list(info.r)
    assert out.distortion_model == 'plumb_bob'


def test_depth_camera_info_rectified_has_zero_d_and_k_from_p():
    info = rectified_camera()
    out = depth_camera_info(info, Header(), 40, 30, rectified=True)
    assert list(out.d) == [0.0] * 5
    assert list(out.k) == [30.0, 0.0, 20.0, 0.0, 31.0, 15.0, 0.0, 0.0, 1.0]
    assert list(out.r) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert list(out.p) == list(info.p)
    # The depth image's rays through depth/camera_info's K equal the node's own (P) rays.
    np.testing.assert_allclose(compute_rays(out, 40, 30), compute_rays(info, 40, 30,
                                                                       rectified=True))


def test_depth_camera_info_of_another_resolution_is_scaled():
    info = pinhole(1280, 960, 1000.0, 1000.0, 639.5, 479.5)
    info.p = [1000.0, 0.0, 639.5, -50.0, 0.0, 1000.0, 479.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    out = depth_camera_info(info, Header(), 640, 480)
    assert (out.width, out.height) == (640, 480)
    assert list(out.k) == [500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0]
    assert list(out.p) == [500.0, 0.0, 319.5, -25.0, 0.0, 500.0, 239.5, 0.0, 0.0, 0.0, 1.0,
                           0.0]
    assert camera_matrix(out, 640, 480) == camera_matrix(info, 640, 480)
