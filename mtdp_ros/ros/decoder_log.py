"""The image decoders' own messages, kept off the process's stderr and logged, throttled.

libjpeg and libpng write warnings straight to file descriptor 2; :class:`DecoderMessages`
decodes with OpenCV while capturing them (see its docstring). Used by
:mod:`mtdp_ros.ros.image_input` for compressed camera images.
"""

import collections
import logging
import os
import sys
import tempfile
import threading
import time

import cv2


class DecoderMessages:
    """Decodes with OpenCV while keeping libjpeg/libpng messages off the process's stderr.

    libjpeg and libpng print warnings ("Corrupt JPEG data: 1 extraneous bytes before marker
    0xc4", "libpng error: ...") with ``fprintf(stderr)``, which OpenCV's log level does not
    reach; a stream of corrupt frames would flood the console. While OpenCV decodes, file
    descriptor 2 points at a private file (decodes are serialised by a lock). Afterwards,
    decoder lines are counted (``counts``, by first words) and logged through ``logging`` at
    most once per ``period`` seconds per kind with the number suppressed; any other text
    written to stderr meanwhile (another thread's) is passed on to the real stderr.
    """

    PREFIXES = ('Corrupt JPEG data', 'Premature end of JPEG file', 'Invalid JPEG file',
                'Unsupported', 'Not a JPEG file', 'Bogus', 'libpng warning', 'libpng error',
                'Warning', 'Inconsistent progression', 'Huffman table', 'Quantization table')

    def __init__(self, period=10.0, clock=time.monotonic):
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._capture = None
        self.counts = collections.Counter()
        self._last_logged = {}
        self._suppressed = collections.Counter()

    def decode(self, buffer):
        """Decode as cv2.imdecode with IMREAD_COLOR, the decoders' stderr output captured."""
        with self._lock:
            image, text = self._decode_captured(buffer)
        if text:
            self._report(text)
        return image

    def _decode_captured(self, buffer):
        try:
            if self._capture is None:
                self._capture = tempfile.TemporaryFile()
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return cv2.imdecode(buffer, cv2.IMREAD_COLOR), b''    # no capture possible
        capture = self._capture
        capture.seek(0)
        capture.truncate()
        try:
            os.dup2(capture.fileno(), 2)
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return image, capture.read()

    def _report(self, text):
        passed_on = []
        with self._lock:
            self._sort(text, passed_on)
        if passed_on:
            sys.stderr.write('\n'.join(passed_on) + '\n')
            sys.stderr.flush()

    def _sort(self, text, passed_on):
        for line in text.decode('utf-8', 'replace').splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith(self.PREFIXES):
                passed_on.append(line)
                continue
            kind = ' '.join(stripped.split(':')[0].split()[:3])
            self.counts[kind] += 1
            now = self._clock()
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.period:
                self._suppressed[kind] += 1
                continue
            self._last_logged[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
            extra = f' ({suppressed} similar suppressed)' if suppressed else ''
            LOGGER.warning('image decoder: %s%s', stripped, extra)


# A child of the runtime's logger: the node forwards that one (and so this) to the ROS log.
LOGGER = logging.getLogger('mtdp_ros.runtime.decoder')
# To the runtime's logger, whose handlers the node sets. Explicit: once `launch` is imported
# (launch files, launch tests in one process), every new logger starts non-propagating.
LOGGER.propagate = True
DECODER_MESSAGES = DecoderMessages()
