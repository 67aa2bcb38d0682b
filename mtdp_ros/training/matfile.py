"""Minimal reader and writer of MATLAB level-5 ``.mat`` files (no SciPy needed).

PASCAL-Context's multi-task tarball keeps its context labels (``LabelMap``) and human part
annotations (``anno``) in ``.mat`` files. This module reads what those files contain:
numeric and logical arrays, strings, cell arrays and struct arrays, compressed or not.
Structs come back as NumPy object arrays of ``dict`` (field -> value, in file order); cells
as object arrays; strings as ``str``; numeric data with MATLAB's shape (column-major order
undone). ``savemat`` writes the same kinds of values (used to build test fixtures).
"""

import struct
import zlib

import numpy as np

MI_TYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32,
            7: np.float32, 9: np.float64, 12: np.int64, 13: np.uint64, 16: np.uint8,
            17: np.uint16, 18: np.uint32}
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_CELL, MX_STRUCT, MX_CHAR, MX_SPARSE = 1, 2, 4, 5
MX_TYPES = {6: np.float64, 7: np.float32, 8: np.int8, 9: np.uint8, 10: np.int16,
            11: np.uint16, 12: np.int32, 13: np.uint32, 14: np.int64, 15: np.uint64}
FLAG_COMPLEX, FLAG_LOGICAL = 0x800, 0x200


class MatFileError(ValueError):
    """A file that is not a level-5 MAT file, or uses a feature this reader lacks."""


def _read_tag(data, offset, order):
    first, second = struct.unpack_from(order + 'II', data, offset)
    if first >> 16:                       # small data element: 4 bytes of data in the tag
        return first & 0xFFFF, first >> 16, offset + 4, offset + 8
    end = offset + 8 + second
    padded = end if first == MI_COMPRESSED else offset + 8 + ((second + 7) // 8) * 8
    return first, second, offset + 8, padded


def _elements(data, order):
    offset = 0
    while offset + 8 <= len(data):
        mi_type, size, start, nxt = _read_tag(data, offset, order)
        if start + size > len(data):
            raise MatFileError('truncated data element')
        yield mi_type, data[start:start + size]
        offset = nxt


def _numeric(mi_type, payload, order):
    if mi_type not in MI_TYPES:
        raise MatFileError(f'unsupported data type {mi_type}')
    return np.frombuffer(payload, dtype=np.dtype(MI_TYPES[mi_type]).newbyteorder(order))


def _parse_matrix(payload, order):
    parts = list(_elements(payload, order))
    if not parts:
        return np.zeros((0, 0))
    flags = _numeric(*parts[0], order)
    mx_class, flag_bits = int(flags[0]) & 0xFF, int(flags[0])
    dims = tuple(int(d) for d in _numeric(*parts[1], order))
    count = int(np.prod(dims)) if dims else 0
    rest = parts[3:]                      # parts[2] is the array name
    if mx_class in MX_TYPES:
        real = _numeric(*rest[0], order).astype(MX_TYPES[mx_class])
        if flag_bits & FLAG_COMPLEX:
            real = real + 1j * _numeric(*rest[1], order)
        array = real.reshape(dims, order='F')
        return array.astype(bool) if flag_bits & FLAG_LOGICAL else array
    if mx_class == MX_CHAR:
        codes = _numeric(*rest[0], order) if rest else np.zeros(0, np.uint16)
        if rest and rest[0][0] == 16:
            text = bytes(rest[0][1]).decode('utf-8')
            return text
        chars = codes.reshape(dims, order='F') if count else np.zeros(dims, np.uint16)
        rows = [''.join(chr(c) for c in row) for row in np.atleast_2d(chars)]
        return rows[0] if len(rows) == 1 else np.array(rows, dtype=object)
    if mx_class == MX_CELL:
        cells = np.empty(count, dtype=object)
        for index, (mi_type, sub) in enumerate(rest[:count]):
            cells[index] = _parse_matrix(sub, order)
        return cells.reshape(dims, order='F')
    if mx_class == MX_STRUCT:
        name_len = int(_numeric(*rest[0], order)[0])
        raw = bytes(rest[1][1])
        names = [raw[i:i + name_len].split(b'\0', 1)[0].decode('ascii')
                 for i in range(0, len(raw), name_len)] if name_len else []
        values = rest[2:]
        items = np.empty(count, dtype=object)
        for index in range(count):
            fields = values[index * len(names):(index + 1) * len(names)]
            items[index] = {name: _parse_matrix(sub, order)
                            for name, (mi_type, sub) in zip(names, fields)}
        return items.reshape(dims, order='F')
    if mx_class == MX_SPARSE:
        raise MatFileError('sparse matrices are not supported')
    raise MatFileError(f'unsupported MATLAB class {mx_class}')


def loadmat(path):
    """Variables of a level-5 MAT file as a dict name -> value."""
    with open(path, 'rb') as handle:
        data = handle.read()
    if len(data) < 128:
        raise MatFileError(f'{path}: too short for a MAT file')
    if data[:4] == b'\x89HDF':
        raise MatFileError(f'{path}: MATLAB v7.3 (HDF5) files are not supported')
    indicator = data[126:128]
    if indicator == b'IM':
        order = '<'
    elif indicator == b'MI':
        order = '>'
    else:
        raise MatFileError(f'{path}: not a level-5 MAT file')
    variables = {}
    for mi_type, payload in _elements(data[128:], order):
        if mi_type == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise MatFileError(f'{path}: corrupt compressed element ({exc})') from None
            mi_type, size, start, _ = _read_tag(payload, 0, order)
            payload = payload[start:start + size]
        if mi_type != MI_MATRIX:
            continue
        name_parts = list(_elements(payload, order))
        name = bytes(name_parts[2][1]).decode('ascii') if len(name_parts) > 2 else ''
        variables[name] = _parse_matrix(payload, order)
    return variables


# ----------------------------------------------------------------------------- writing
def _element(mi_type, payload):
    if len(payload) <= 4 and mi_type != MI_MATRIX:
        return struct.pack('<HH', mi_type, len(payload)) + payload.ljust(4, b'\0')
    pad = (-len(payload)) % 8
    return struct.pack('<II', mi_type, len(payload)) + payload + b'\0' * pad


_NUMPY_TO_CLASS = {np.dtype(v): (k, next(m for m, t in MI_TYPES.items() if t == v))
                   for k, v in MX_TYPES.items()}


def _matrix(value, name=''):
    header = b''
    if isinstance(value, dict):
        value = np.array([value], dtype=object).reshape(1, 1)
    if isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
        value = np.array(value, dtype=object).reshape(1, len(value))
    if isinstance(value, str):
        codes = np.array([ord(c) for c in value], dtype='<u2')
        flags, dims, body = MX_CHAR, (1, len(value)), _element(4, codes.tobytes())
    elif isinstance(value, np.ndarray) and value.dtype == object and value.size and \
            all(isinstance(v, dict) for v in value.flat):
        names = list(value.flat[0])
        width = max(len(n) for n in names) + 1
        body = _element(5, struct.pack('<i', width))
        body += _element(1, b''.join(n.encode('ascii').ljust(width, b'\0') for n in names))
        for item in value.flatten(order='F'):
            for field in names:
                body += _matrix(item[field])
        flags, dims = MX_STRUCT, value.shape
    elif isinstance(value, np.ndarray) and value.dtype == object:
        body = b''.join(_matrix(item) for item in value.flatten(order='F'))
        flags, dims = MX_CELL, value.shape
    else:
        array = np.asarray(value)
        logical = array.dtype == bool
        if logical:
            array = array.astype(np.uint8)
        if array.dtype not in _NUMPY_TO_CLASS:
            array = array.astype(np.float64)
        mx_class, mi_type = _NUMPY_TO_CLASS[array.dtype]
        array = np.atleast_2d(array)
        flags = mx_class | (FLAG_LOGICAL if logical else 0)
        dims = array.shape
        body = _element(mi_type, array.astype(array.dtype.newbyteorder('<'))
                        .flatten(order='F').tobytes())
    header += _element(6, struct.pack('<II', flags, 0))
    header += _element(5, np.array(dims, dtype='<i4').tobytes())
    header += _element(1, name.encode('ascii'))
    return _element(MI_MATRIX, header + body)


def savemat(path, variables, compress=True):
    """Write ``variables`` (name -> array, str, dict, list of dicts, object array)."""
    text = b'MATLAB 5.0 MAT-file, written by mtdp_ros'.ljust(116, b' ')
    out = [text + b'\0' * 8 + struct.pack('<H', 0x0100) + b'IM']
    for name, value in variables.items():
        element = _matrix(value, name)
        if compress:
            packed = zlib.compress(element)
            element = struct.pack('<II', MI_COMPRESSED, len(packed)) + packed
        out.append(element)
    with open(path, 'wb') as handle:
        handle.write(b''.join(out))
