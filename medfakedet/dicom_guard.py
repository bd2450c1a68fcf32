"""Checks on a DICOM upload before its data is inflated or its pixels decoded.

A few hundred bytes of DICOM can ask for gigabytes: a deflated dataset (transfer syntax
1.2.840.10008.1.2.1.99) is inflated whole by the reader before any size is known, RLE runs expand
up to 64x, and a compressed frame can declare another size than Rows x Columns. These checks read
only headers:

* :func:`meta_transfer_syntax` reads the transfer syntax from the file meta group (group 0002,
  always Explicit VR Little Endian), before the dataset is read; :func:`refuse_deflate` refuses
  deflate with a 415;
* :func:`check_rle_frame` walks the run headers of each RLE segment and stops as soon as one would
  expand beyond Rows x Columns bytes;
* :func:`check_frame_header` reads the size a JPEG (SOF marker) or JPEG 2000 (SIZ marker) frame
  declares and compares it with Rows / Columns.
"""

from __future__ import annotations

import struct

from medfakedet.decoding import TruncatedImageError, UnsupportedImageError

__all__ = [
    "DEFLATE",
    "RLE",
    "check_frame_header",
    "check_rle_frame",
    "meta_transfer_syntax",
    "refuse_deflate",
]

DEFLATE = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
_JPEG_PREFIX = "1.2.840.10008.1.2.4."
_JPEG2000 = {"90", "91", "92", "93", "201", "202", "203"}  # the rest of 1.2.840.10008.1.2.4.x
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS.add(b"UV")
_TRANSFER_SYNTAX_TAG = (0x0002, 0x0010)


def meta_transfer_syntax(data: bytes) -> str | None:
    """The TransferSyntaxUID of the file meta group, or None when there is none to read.

    The group starts after the 128-byte preamble and "DICM", or at byte 0 for a file without
    preamble that starts with it.
    """
    pos = 132 if data[128:132] == b"DICM" else 0
    for _ in range(64):  # the meta group has a dozen elements
        if pos + 8 > len(data):
            return None
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return None
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                return None
            (length,), start = struct.unpack_from("<I", data, pos + 8), pos + 12
        else:
            (length,), start = struct.unpack_from("<H", data, pos + 6), pos + 8
        if (group, element) == _TRANSFER_SYNTAX_TAG:
            return data[start : start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    return None


def refuse_deflate(transfer_syntax: str | None) -> None:
    """A deflated dataset is a 415: it must be inflated whole before anything can be checked."""
    if transfer_syntax == DEFLATE:
        raise UnsupportedImageError(
            f"DICOM transfer syntax Deflated Explicit VR Little Endian ({DEFLATE}) is not "
            "accepted: the whole dataset would have to be inflated before its size can be "
            "checked (a few hundred KB can inflate to gigabytes); send uncompressed, RLE or "
            "JPEG DICOM, PNG or TIFF"
        )


def check_rle_frame(frame: bytes, rows: int, columns: int, segments: int) -> None:
    """Refuse an RLE frame whose segments would decode to more than ``rows * columns`` bytes each.

    Args:
        frame: the encapsulated frame (64-byte RLE header, then the segments).
        rows, columns: the image size from the DICOM header.
        segments: the segment count the header must declare (samples x bytes per sample).
    """
    if len(frame) < 64:
        raise TruncatedImageError(
            "DICOM pixel data is truncated or corrupt: the RLE frame is shorter than its "
            "64-byte header"
        )
    header = struct.unpack_from("<16I", frame, 0)
    if header[0] != segments:
        raise TruncatedImageError(
            f"DICOM RLE frame declares {header[0]} segments; Samples per Pixel x Bits "
            f"Allocated / 8 needs {segments}"
        )
    offsets = [*header[1 : 1 + segments], len(frame)]
    limit = rows * columns
    for i in range(segments):
        start, end = offsets[i], offsets[i + 1]
        if not 64 <= start <= end <= len(frame):
            raise TruncatedImageError(f"DICOM RLE segment {i} has a bad offset ({start})")
        if _rle_expanded_length(frame, start, end, limit) > limit:
            raise TruncatedImageError(
                f"DICOM RLE segment {i} expands beyond Rows x Columns ({rows}x{columns} = "
                f"{limit:,} bytes); the pixel data does not match its header"
            )


def _rle_expanded_length(data: bytes, pos: int, end: int, limit: int) -> int:
    """Bytes the PackBits runs in ``data[pos:end]`` decode to; stops once past ``limit``."""
    total = 0
    while pos < end and total <= limit:
        n = data[pos]
        if n < 128:  # literal run of n + 1 bytes
            total += n + 1
            pos += n + 2
        elif n > 128:  # the next byte repeated 257 - n times
            total += 257 - n
            pos += 2
        else:  # 128: no-op
            pos += 1
    return total


def check_frame_header(frame: bytes, transfer_syntax: str, rows: int, columns: int) -> None:
    """Compare the size a JPEG / JPEG 2000 frame declares with Rows x Columns (400 if not equal).

    Other transfer syntaxes pass unchecked (RLE has :func:`check_rle_frame`).
    """
    if not transfer_syntax.startswith(_JPEG_PREFIX):
        return
    if transfer_syntax[len(_JPEG_PREFIX) :] in _JPEG2000:
        size, kind = _j2k_size(frame), "JPEG 2000"
    else:
        size, kind = _jpeg_size(frame), "JPEG"
    if size is None:
        raise TruncatedImageError(f"DICOM {kind} frame has no readable size header (SOF/SIZ)")
    width, height = size
    if (width, height) != (columns, rows):
        raise TruncatedImageError(
            f"DICOM {kind} frame is {width}x{height} pixels but the header says Columns x Rows "
            f"= {columns}x{rows}; the two must agree"
        )


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker of a JPEG stream."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(frame):
                return None
            height, width = struct.unpack_from(">HH", frame, pos + 5)
            return width, height
        if marker == 0xDA:  # start of scan before any SOF
            return None
        pos += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the SIZ marker of a JPEG 2000 codestream (raw or inside a JP2)."""
    pos = frame.find(b"\xff\x4f\xff\x51")
    if pos < 0 or pos + 24 > len(frame):
        return None
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", frame, pos + 8)
    return xsiz - x0, ysiz - y0
