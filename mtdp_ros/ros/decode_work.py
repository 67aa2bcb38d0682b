"""Bounds on the work of decoding a compressed camera image, checked before decoding.

The pixel limit (``input.max_pixels``) bounds what a decoded image holds, not what
decoding it costs. Two cheap structural checks bound the cost too:

- **JPEG scans.** A progressive JPEG is decoded scan by scan, and libjpeg passes over
  every block of the image in each scan, even an empty one. A 645 kB file of 4096 x 3072
  pixels with 20,000 empty scans stalls the decoder for a minute, while the message is
  within every size limit. The scans (SOS markers) are counted by walking the marker
  segments and the entropy-coded data between them; more than :data:`MAX_JPEG_SCANS` is
  refused. Encoders write at most a few tens: libjpeg's and libjpeg-turbo's progressive
  script has 10 scans for colour and 6 for grey, Photoshop 3 to 5, a baseline JPEG one
  per component at most (4). At the pixel limit each empty scan costs about 12 ms on a
  2-core VM (``scripts/bench_decode_work.py``), so 32 scans keep a bomb within about one
  frame's normal time (a 10-scan decode of that size takes about 0.2 s, inference more).
  The limit is not a parameter: no camera needs more, and the node's frame budget, not
  the camera, sets it.
- **PNG decoded bytes.** A PNG's inflate work (and libpng's row buffers) are proportional
  to the bytes its rows hold, width x height x channels x bytes per sample: a 16-bit RGBA
  image holds 8 bytes per pixel, and an all-zero one inflates about 1000:1 (73 kB for a
  16-bit RGB 4096 x 3072). The decoded bytes may not exceed what an 8-bit RGBA image at the
  pixel limit holds (``max_pixels * 4``): every 8-bit PNG within the pixel limit passes,
  a 16-bit one up to two thirds (RGB) or half (RGBA) of it.

:func:`decode_work_problem` returns a sentence naming the problem, or None.
"""

import re

# See the module docstring: 3x libjpeg's progressive script, about one frame's time.
MAX_JPEG_SCANS = 32
# Bytes per decoded pixel of an 8-bit RGBA image: the PNG budget per pixel of the limit.
PNG_BUDGET_BYTES_PER_PIXEL = 4
# Channels of each PNG colour type (palette images hold 1 index per pixel).
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}

# In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed zero), a restart marker
# (RST0..RST7, 0xD0..0xD7) or fill bytes (0xFF): anything else is the next marker.
_MARKER_IN_SCAN = re.compile(rb'\xff[^\x00\xd0-\xd7\xff]')
_SOS, _EOI = 0xDA, 0xD9
# Markers without a length field: TEM, RST0..RST7, SOI, EOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])


def jpeg_scan_count(data, stop_after=None):
    """The number of scans (SOS markers) in a JPEG, counted without decoding.

    Marker segments are skipped by their length field (so an SOS inside an EXIF thumbnail
    is not counted); after each SOS header, the entropy-coded data is skipped to the next
    marker. Counting stops at EOI, at the end of the data, or once ``stop_after`` is
    exceeded (a bomb is not walked to its end). Malformed structure ends the count: the
    decoder reports it.
    """
    data = bytes(data)
    size = len(data)
    position = 2                                   # after SOI
    scans = 0
    while position < size:
        position = data.find(b'\xff', position)
        if position < 0:
            break
        while position < size and data[position] == 0xFF:
            position += 1                          # the 0xFF and any fill bytes
        if position >= size:
            break
        marker = data[position]
        position += 1
        if marker == _EOI:
            break
        if marker == 0x00 or marker in _STANDALONE:
            continue
        if position + 2 > size:
            break
        length = int.from_bytes(data[position:position + 2], 'big')
        position += max(length, 2)
        if marker != _SOS:
            continue
        scans += 1
        if stop_after is not None and scans > stop_after:
            break
        found = _MARKER_IN_SCAN.search(data, position)
        if found is None:
            break
        position = found.start()
    return scans


def png_decoded_bytes(data):
    """Bytes a PNG's rows hold once inflated (width x height x channels x bytes per sample).

    None when the IHDR cannot be read (the header check reports that).
    """
    data = bytes(data[:29])
    if len(data) < 29 or data[12:16] != b'IHDR':
        return None
    width = int.from_bytes(data[16:20], 'big')
    height = int.from_bytes(data[20:24], 'big')
    bit_depth, colour_type = data[24], data[25]
    channels = PNG_CHANNELS.get(colour_type, 4)
    return width * height * channels * (2 if bit_depth == 16 else 1)


def decode_work_problem(data, max_pixels):
    """Why decoding ``data`` (a JPEG or PNG) would cost too much work, or None.

    ``max_pixels`` is the node's ``input.max_pixels``; see the module docstring.
    """
    head = bytes(data[:8])
    if head.startswith(b'\xff\xd8\xff'):
        scans = jpeg_scan_count(data, stop_after=MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            return (f'JPEG has more than {MAX_JPEG_SCANS} scans (progressive passes); '
                    f'encoders write at most a few tens, and each scan costs a pass over the '
                    f'whole image: refused before decoding')
        return None
    if head == b'\x89PNG\r\n\x1a\n':
        decoded = png_decoded_bytes(data)
        budget = max_pixels * PNG_BUDGET_BYTES_PER_PIXEL
        if decoded is not None and decoded > budget:
            return (f'PNG rows hold {decoded} bytes once inflated (16-bit samples), more '
                    f'than the {budget} bytes of an 8-bit RGBA image at the pixel limit '
                    f'({max_pixels} pixels, input.max_pixels): refused before decoding')
    return None
