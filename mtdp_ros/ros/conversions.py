"""Former home of image decoding and encoding, kept so that older imports keep working.

New code imports from :mod:`mtdp_ros.ros.image_input` (camera images in),
:mod:`mtdp_ros.ros.image_output` (output and test images out) and
:mod:`mtdp_ros.ros.decoder_log` (the decoders' stderr messages).
"""

from mtdp_ros.ros.decoder_log import DECODER_MESSAGES, DecoderMessages  # noqa: F401
from mtdp_ros.ros.image_input import (  # noqa: F401
    BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS, ImageRejected, JPEG_SIGNATURE, PNG_SIGNATURE,
    SUPPORTED_ENCODINGS, UYVY_ENCODINGS, YUYV_ENCODINGS, check_size, compressed_dimensions,
    compressed_msg_to_rgb, image_msg_to_rgb, raw_to_rgb)
from mtdp_ros.ros.image_output import (  # noqa: F401
    OUTPUT_ENCODINGS, image_msg_to_numpy, numpy_to_image_msg, pack_yuv422, rgb_to_image_msg,
    rgb_to_yuv601)
