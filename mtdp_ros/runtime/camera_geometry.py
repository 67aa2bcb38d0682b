"""Camera intrinsics under image resizing: the one rule the node, the CLI and training use.

Pixel centres lie at integer coordinates (OpenCV, ROS camera_info), so the image corner is
at -0.5: scaling about that corner maps a coordinate ``c`` to ``(c + 0.5) * s - 0.5``.
No PyTorch here (light to import).
"""


def scale_centre(c, scale):
    """A principal-point coordinate after scaling the image by ``scale`` along its axis."""
    return (c + 0.5) * scale - 0.5


def scale_intrinsics(intrinsics, scale, offset=(0, 0)):
    """(fx, fy, cx, cy) after resizing by ``scale`` and shifting by ``offset`` (top, left).

    ``scale``: one factor for both axes, or a (y, x) pair (``Letterbox.scale``).
    """
    fx, fy, cx, cy = intrinsics
    scale_y, scale_x = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    top, left = offset
    return (fx * scale_x, fy * scale_y, scale_centre(cx, scale_x) + left,
            scale_centre(cy, scale_y) + top)
