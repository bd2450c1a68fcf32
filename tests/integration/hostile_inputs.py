"""Hostile uploads, built in memory and seeded: image bombs, broken files, bad DICOM, bad fields.

Each maker returns the bytes of one file; :data:`FILE_KINDS` names them with the statuses the
server may answer. Used by ``test_hostile.py`` (through nginx) and ``scripts/fault_injection.py``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)


# ------------------------------------------------------------------------------------- images
def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def _ihdr(width: int, height: int) -> bytes:
    return _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` and whose data stops after the header."""
    return b"\x89PNG\r\n\x1a\n" + _ihdr(width, height)


def png_zero_bomb(side: int) -> bytes:
    """A real, complete gray PNG of ``side x side`` zeros (a few dozen KB for 8000 px)."""
    raw = zlib.compress(b"\x00" * (side + 1) * side, 9)
    idat, end = _png_chunk(b"IDAT", raw), _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + _ihdr(side, side) + idat + end


@functools.cache
def png_slow_bomb(side: int = 8000) -> bytes:
    """A complete RGBA 16-bit PNG of zeros (~500 KB) whose 512 MB of filtered rows take longer
    to inflate than the 4 s decode limit on a 2-core machine (its pixels fit the budgets)."""
    row = bytes(1 + side * 8)
    comp = zlib.compressobj(9)
    raw = b"".join([*(comp.compress(row) for _ in range(side)), comp.flush()])
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0))
    idat, end = _png_chunk(b"IDAT", raw), _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + end


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 is patched to declare ``width x height``: the decoder
    reads the header's size and runs out of data (issue #11's 1 KB JPEG bomb)."""
    data = bytearray(jpeg_bytes(np.full((16, 16), 128, np.uint8)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    # patch ImageWidth (256) and ImageLength (257) in the first IFD
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        pos = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", data, pos)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                struct.pack_into("<HHIH", data, pos, tag, 4, 1, 0)  # force LONG
            struct.pack_into("<HHII", data, pos, tag, 4, 1, value)
    return bytes(data)


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "GIF")
    return buf.getvalue()


# -------------------------------------------------------------------------------------- DICOM
def _dataset(transfer_syntax, rows: int, cols: int, **extra) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "TEST"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _saved(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_plain(pixels: np.ndarray, **extra) -> bytes:
    """8-bit uncompressed MONOCHROME2 DICOM; ``extra`` header values (e.g. WindowCenter)."""
    ds = _dataset(ExplicitVRLittleEndian, *pixels.shape, **extra)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    return _saved(ds)


def dicom_deflate_bomb(megabytes: int = 200) -> bytes:
    """Deflated DICOM (a few hundred KB) whose dataset inflates to ``megabytes`` MiB."""
    ds = _dataset(DeflatedExplicitVRLittleEndian, 64, 64)
    ds.PixelData = bytes(64 * 64)
    data = _saved(ds)
    # The deflated dataset, replaced by one private OB element of zeros.
    payload = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, megabytes * 2**20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [comp.compress(payload)]
    zero = bytes(2**20)
    chunks += [comp.compress(zero) for _ in range(megabytes)]
    chunks.append(comp.flush())
    return data[: _meta_end(data)] + b"".join(chunks)


def _meta_end(data: bytes) -> int:
    """Offset after the file meta group (its group length element says where)."""
    (length,) = struct.unpack_from("<I", data, 132 + 8)
    return 132 + 12 + length


def dicom_rle_bomb(rows: int = 64, cols: int = 64, runs: int = 200_000) -> bytes:
    """RLE DICOM declaring ``rows x cols`` whose one segment expands 64x past that."""
    segment = b"\x81\x00" * runs  # each 2 bytes -> 128 zeros
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds = _dataset(RLELossless, rows, cols)
    ds.PixelData = encapsulate([header + segment])
    ds["PixelData"].VR = "OB"
    return _saved(ds)


def dicom_jpeg_mismatch(rows: int = 64, cols: int = 64, jpeg_side: int = 4000) -> bytes:
    """JPEG-baseline DICOM whose frame declares ``jpeg_side`` square, not Rows x Columns."""
    ds = _dataset(JPEGBaseline8Bit, rows, cols)
    ds.PixelData = encapsulate([jpeg_declaring(jpeg_side, jpeg_side)])
    ds["PixelData"].VR = "OB"
    return _saved(ds)


def dicom_lossless_jpeg() -> bytes:
    """JPEG lossless (no decoder installed here): a 415."""
    ds = _dataset(JPEGLosslessSV1, 64, 64)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64)])
    ds["PixelData"].VR = "OB"
    return _saved(ds)


def dicom_header_only(rows: int, cols: int) -> bytes:
    """Uncompressed DICOM declaring ``rows x cols`` with only 64 bytes of pixel data."""
    ds = _dataset(ExplicitVRLittleEndian, rows, cols)
    ds.PixelData = bytes(64)
    return _saved(ds)
