"""Load tests and benchmarks of the two endpoints, with shared test images.

``locustfile.py`` drives the service with locust; ``benchmark.py`` prints a latency/throughput
table per concurrency. Both post real encoded images and check every answer against the response
models of :mod:`medfakedet.schema` (:func:`medfakedet.schema.result_problem`).

The images: :func:`load_images` takes a folder of real scans (``MEDFAKEDET_IMAGES=DIR``), or else
builds a procedural mix of the formats and sizes the service meets (:func:`mixed_images`): small
8-bit PNG and JPEG slices, 16-bit PNG, 16-bit DICOM (CT-like) and large chest X-rays.
:func:`sample_images` keeps the benchmark's fixed set of small PNGs.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ORGANS = ("brain", "chest", "kidney", "lung")
ENDPOINTS = ("synthesis8", "manipulation_density")
#: Upload Content-Type per file kind (what a client would label it).
CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "dicom": "application/dicom",
}
_SUFFIX_KIND = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
    "": "dicom",
}


@dataclass(frozen=True)
class SampleImage:
    """An encoded test image: file name, bytes, the organ it depicts, and its kind (png, jpeg,
    tiff, bmp, dicom)."""

    name: str
    data: bytes
    organ: str
    kind: str = "png"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.kind, "application/octet-stream")


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    return _encode(array, "PNG")


def dicom_bytes(pixels: np.ndarray, bits: int = 16) -> bytes:
    """Uncompressed MONOCHROME2 DICOM of ``pixels`` in [0, 1]: 16-bit storing 12 bits
    (0..4095, as a CT-like scanner stores) or 8-bit."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    stored = 12 if bits == 16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = 0
    dtype = np.uint16 if bits == 16 else np.uint8
    ds.PixelData = np.rint(pixels * (2**stored - 1)).astype(dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _slices(organ: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural slice of ``organ`` (uint8, size x size); seeded noise without the data
    package (it is optional for load tests). Sizes over 256 are a 256 slice upsampled with a
    little noise: large phantoms cost seconds each to draw."""
    try:
        from medfakedet.data.phantoms import generate_slice
    except ImportError:
        return rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    base = np.asarray(generate_slice(organ, rng, size=min(size, 256)).image)
    if size <= 256:
        return base
    big = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC), np.float32)
    return np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)


def sample_images(count: int = 8, size: int = 256, seed: int = 0) -> list[SampleImage]:
    """``count`` PNGs cycling through the four organs; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        organ = ORGANS[i % len(ORGANS)]
        images.append(SampleImage(f"{organ}_{i:03d}.png", _png(_slices(organ, rng, size)), organ))
    return images


def mixed_images(seed: int = 0) -> list[SampleImage]:
    """The procedural mix, weighted by repetition: per organ two 256-px PNG slices and one
    JPEG (quality 85), a 512-px 16-bit PNG and a 512-px 16-bit DICOM (brain, kidney, lung: the
    CT/MR organs), and two large chest X-rays (2048 px JPEG, 1536 px 16-bit PNG)."""
    rng = np.random.default_rng(seed)
    images = []
    for organ in ORGANS:
        for i in range(2):
            images.append(SampleImage(f"{organ}_{i}.png", _png(_slices(organ, rng, 256)), organ))
        jpeg = _encode(_slices(organ, rng, 256), "JPEG", quality=85)
        images.append(SampleImage(f"{organ}.jpg", jpeg, organ, "jpeg"))
        wide = _slices(organ, rng, 512).astype(np.uint16) * 257  # 16-bit range
        images.append(SampleImage(f"{organ}_16bit.png", _png(wide), organ))
        if organ != "chest":
            dcm = dicom_bytes(wide.astype(np.float32) / 65535.0, bits=16)
            images.append(SampleImage(f"{organ}.dcm", dcm, organ, "dicom"))
    xray = _slices("chest", rng, 2048)
    images.append(SampleImage("chest_xray_2048.jpg", _encode(xray, "JPEG", quality=90),
                              "chest", "jpeg"))  # fmt: skip
    big16 = _slices("chest", rng, 1536).astype(np.uint16) * 257
    images.append(SampleImage("chest_xray_1536_16bit.png", _png(big16), "chest"))
    return images


def folder_images(root: str | Path, limit: int = 256, seed: int = 0) -> list[SampleImage]:
    """Up to ``limit`` image files under ``root`` (a seeded sample when there are more); the
    organ is the first of brain/chest/kidney/lung in the file's path, else "unknown"."""
    from medfakedet.scan import collect_files

    files = collect_files([root], recursive=True)
    if not files:
        raise ValueError(f"{root}: no image files (png, jpg, tif, bmp, dcm) found")
    if len(files) > limit:
        files = sorted(random.Random(seed).sample(files, limit))
    images = []
    for path in files:
        parts = [p.lower() for p in path.relative_to(root).parts]
        organ = next((o for o in ORGANS if any(o in p for p in parts)), "unknown")
        kind = _SUFFIX_KIND.get(path.suffix.lower(), "png")
        images.append(SampleImage(str(path.relative_to(root)), path.read_bytes(), organ, kind))
    return images


def load_images(seed: int = 0) -> list[SampleImage]:
    """``MEDFAKEDET_IMAGES=DIR``: the scans of that folder; unset: :func:`mixed_images`."""
    folder = os.environ.get("MEDFAKEDET_IMAGES")
    if folder:
        return folder_images(folder, int(os.environ.get("MEDFAKEDET_IMAGES_LIMIT", "256")), seed)
    return mixed_images(seed)
