"""Tests for medfakedet.imaging: every input is a real encoded file made here (PIL / pydicom)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom.pixels
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from medfakedet.imaging import (
    DEFAULT_LIMITS,
    DecodedImage,
    DecodeLimits,
    EmptyInputError,
    ImageDecodeError,
    NotAnImageError,
    PayloadTooLargeError,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
    decode_image,
    encode_png,
    load_image_file,
    to_uint8,
)

REAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dev"


# ------------------------------------------------------------------------------------ helpers
def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient_u8(h: int = 24, w: int = 32) -> np.ndarray:
    """Deterministic 8-bit gray ramp (smooth, so JPEG reproduces it closely)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 255) // (w - 1) // 2 + (yy * 255) // (h - 1) // 2).astype(np.uint8)


def rgb_u8(h: int = 24, w: int = 32) -> np.ndarray:
    g = gradient_u8(h, w)
    return np.stack([g, 255 - g, np.full_like(g, 77)], axis=2)


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    pixel_bytes: bytes | None = None,
    **elements,
) -> bytes:
    """A real DICOM Part 10 file (preamble + 'DICM' + meta) holding ``pixels``.

    ``pixel_data`` is encapsulated as compressed frame bytes; ``pixel_bytes`` replaces the native
    pixel data (e.g. several frames).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["medfakedet-test"])
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.SamplesPerPixel = pixels.shape[2]
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    elif pixel_data is None:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    else:
        ds.PixelData = encapsulate([pixel_data])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG and fix the chunk CRC."""
    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


# ----------------------------------------------------------------------------- errors / limits
def test_exception_hierarchy_and_status() -> None:
    expected = {
        EmptyInputError: 400,
        NotAnImageError: 400,
        TruncatedImageError: 400,
        TooManyPixelsError: 413,
        PayloadTooLargeError: 413,
        UnsupportedImageError: 415,
    }
    for cls, status in expected.items():
        assert issubclass(cls, ImageDecodeError)
        assert issubclass(cls, ValueError)
        assert cls.status == status
    assert DecodeLimits(max_bytes=50 * 2**20, max_pixels=8192 * 8192) == DEFAULT_LIMITS
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_bytes = 1  # type: ignore[misc]


def test_empty_bytes() -> None:
    with pytest.raises(EmptyInputError, match="empty body: no image bytes were received"):
        decode_image(b"")


def test_text_is_not_an_image() -> None:
    text = b"patient: 12345\nthis is a text file, not a scan\n" * 4
    with pytest.raises(NotAnImageError, match="accepted formats: PNG") as info:
        decode_image(text)
    assert "DICOM" in str(info.value)
    assert info.value.status == 400


def test_other_image_format_is_unsupported() -> None:
    gif = encode(Image.fromarray(gradient_u8()), "GIF")
    with pytest.raises(UnsupportedImageError, match="GIF images are not accepted") as info:
        decode_image(gif)
    assert info.value.status == 415


def test_truncated_jpeg() -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)  # entropy data >> header
    jpeg = encode(Image.fromarray(noise), "JPEG", quality=90)
    assert len(jpeg) > 10_000
    half = jpeg[: len(jpeg) // 2]
    with Image.open(io.BytesIO(half)) as im:  # the header is intact: PIL opens it lazily
        assert im.size == (128, 128)
    with pytest.raises(TruncatedImageError, match="JPEG file is truncated or corrupt"):
        decode_image(half)
    # Cut inside the header: still "truncated", not "not an image".
    with pytest.raises(TruncatedImageError, match="JPEG"):
        decode_image(jpeg[:300])


def test_truncated_png() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)  # incompressible: long IDAT
    png = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(TruncatedImageError, match="PNG file is truncated or corrupt"):
        decode_image(png[: len(png) // 2])


def test_png_with_cut_or_broken_header_is_truncated_not_unknown() -> None:
    png = encode(Image.fromarray(gradient_u8()), "PNG")
    with pytest.raises(TruncatedImageError, match="PNG file is truncated or corrupt"):
        decode_image(png[:20])
    with pytest.raises(TruncatedImageError, match="starts like a PNG file"):
        decode_image(png[:8] + b"garbage-garbage-garbage")


@pytest.fixture
def pil_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of every image whose pixel data PIL decodes (``ImageFile.load``)."""
    calls: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(im: ImageFile.ImageFile) -> object:
        calls.append(im.size)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_png_decompression_bomb_header_rejected_before_decoding(
    pil_loads: list[tuple[int, int]],
) -> None:
    png = encode(Image.fromarray(gradient_u8(8, 8)), "PNG")
    bomb = patch_png_size(png, 40000, 40000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may leak out
        with pytest.raises(TooManyPixelsError) as info:
            decode_image(bomb)
    assert pil_loads == []  # rejected from the header: no pixel buffer was ever allocated
    decode_image(png)
    assert set(pil_loads) == {(8, 8)}  # the spy does see a real decode
    message = str(info.value)
    assert "40000x40000 pixels (1.6e+09)" in message
    assert "8192x8192 (67,108,864 pixels)" in message
    assert info.value.status == 413


def test_pil_bomb_limit_still_applies_above_a_larger_custom_limit() -> None:
    # 10000x10000 = 1e8 is under the custom limit but over PIL's MAX_IMAGE_PIXELS (~8.9e7),
    # whose DecompressionBombWarning must become a 413, not leak or be ignored.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10000 * 10000
    bomb = patch_png_size(encode(Image.fromarray(gradient_u8(8, 8)), "PNG"), 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TooManyPixelsError, match="10000x10000 pixels") as info:
            decode_image(bomb, DecodeLimits(max_pixels=200_000_000))
    assert f"the limit is {Image.MAX_IMAGE_PIXELS:,} pixels" in str(info.value)
    assert "decompression-bomb" in str(info.value)


def test_png_over_custom_pixel_limit_uses_declared_size(pil_loads: list[tuple[int, int]]) -> None:
    png = encode(Image.fromarray(gradient_u8(30, 40)), "PNG")
    with pytest.raises(TooManyPixelsError, match=r"40x30 pixels .*the limit is 1,000 pixels"):
        decode_image(png, DecodeLimits(max_pixels=1000))
    assert pil_loads == []  # PIL opened the header, but the pixel data was never decoded
    # Exactly at the limit is accepted.
    assert decode_image(png, DecodeLimits(max_pixels=1200)).size == (40, 30)


def test_bytes_over_max_bytes() -> None:
    png = encode(Image.fromarray(gradient_u8()), "PNG")
    limit = len(png) - 1
    with pytest.raises(PayloadTooLargeError, match=f"{len(png):,} bytes.*limit is {limit:,} bytes"):
        decode_image(png, DecodeLimits(max_bytes=limit))
    assert decode_image(png, DecodeLimits(max_bytes=len(png))).size == (32, 24)


def test_load_image_file_checks_size_before_reading(tmp_path: Path) -> None:
    png = encode(Image.fromarray(gradient_u8()), "PNG")
    path = tmp_path / "scan.png"
    path.write_bytes(png)
    decoded = load_image_file(path)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], gradient_u8() / 255.0, atol=1e-6)
    with pytest.raises(PayloadTooLargeError, match="scan.png"):
        load_image_file(path, DecodeLimits(max_bytes=len(png) - 1))
    with pytest.raises(FileNotFoundError):
        load_image_file(tmp_path / "missing.png")


# ------------------------------------------------------------------------------- PIL formats
def test_png_8bit_gray() -> None:
    g = gradient_u8()
    out = decode_image(encode(Image.fromarray(g), "PNG"))
    assert isinstance(out, DecodedImage)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == (24, 32, 1)
    assert (out.width, out.height, out.size, out.format, out.mode) == (32, 24, (32, 24), "PNG", "L")
    np.testing.assert_allclose(out.pixels[:, :, 0], g / 255.0, atol=1e-6)


def test_png_16bit_scaled_by_full_range() -> None:
    a = np.array([[0, 1000, 32768], [40000, 65535, 300]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(a), "PNG"))
    assert out.mode == "I;16" and out.pixels.shape == (2, 3, 1)
    # Divided by 65535, not min-max: 300 must not become 0 nor 40000 become 1.
    np.testing.assert_allclose(out.pixels[:, :, 0], a / 65535.0, rtol=1e-6)
    assert out.pixels.max() == pytest.approx(1.0)


def test_png_rgb() -> None:
    rgb = rgb_u8()
    out = decode_image(encode(Image.fromarray(rgb), "PNG"))
    assert out.pixels.shape == (24, 32, 3) and out.mode == "RGB"
    np.testing.assert_allclose(out.pixels, rgb / 255.0, atol=1e-6)


def test_png_rgba_composited_over_black() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[255, 0], [51, 255]]
    out = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert out.pixels.shape == (2, 2, 3) and out.mode == "RGBA"
    np.testing.assert_allclose(out.pixels[0, 0], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_allclose(out.pixels[0, 1], [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out.pixels[1, 0], [0.2 * 200 / 255, 0.2 * 100 / 255, 0.2 * 50 / 255])


def test_png_la_gray_with_alpha() -> None:
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 200
    la[..., 1] = [[255, 0], [102, 255]]
    out = decode_image(encode(_la(la), "PNG"))
    assert out.pixels.shape == (2, 2, 1) and out.mode == "LA"
    np.testing.assert_allclose(
        out.pixels[:, :, 0], [[200 / 255, 0], [0.4 * 200 / 255, 200 / 255]], atol=1e-6
    )


def _la(la: np.ndarray) -> Image.Image:
    return Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])])


def test_png_palette_gray_and_colour() -> None:
    g = gradient_u8()
    gray_p = Image.fromarray(g).convert("P")  # PIL's default palette for L is gray
    out = decode_image(encode(gray_p, "PNG"))
    assert out.mode == "P" and out.pixels.shape == (24, 32, 1)
    np.testing.assert_allclose(out.pixels[:, :, 0], g / 255.0, atol=1e-6)

    colour_p = Image.new("P", (3, 1))
    colour_p.putpalette([255, 0, 0, 0, 255, 0, 10, 10, 10])
    colour_p.putdata([0, 1, 2])
    out = decode_image(encode(colour_p, "PNG"))
    assert out.mode == "P" and out.pixels.shape == (1, 3, 3)
    np.testing.assert_allclose(out.pixels[0], [[1, 0, 0], [0, 1, 0], [10 / 255] * 3], atol=1e-6)


def test_png_palette_with_transparency_composited() -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255])
    p.putdata([0, 1])
    out = decode_image(encode(p, "PNG", transparency=1))
    assert out.pixels.shape == (1, 2, 3)
    np.testing.assert_allclose(out.pixels[0], [[1, 0, 0], [0, 0, 0]], atol=1e-6)


def test_png_1bit() -> None:
    bits = np.array([[True, False, True], [False, False, True]])
    out = decode_image(encode(Image.fromarray(bits), "PNG"))
    assert out.mode == "1" and out.pixels.shape == (2, 3, 1)
    np.testing.assert_array_equal(out.pixels[:, :, 0], bits.astype(np.float32))


def test_bmp() -> None:
    rgb = rgb_u8()
    out = decode_image(encode(Image.fromarray(rgb), "BMP"))
    assert out.format == "BMP" and out.pixels.shape == (24, 32, 3)
    np.testing.assert_allclose(out.pixels, rgb / 255.0, atol=1e-6)


def test_tiff_8bit_and_16bit() -> None:
    g = gradient_u8()
    out = decode_image(encode(Image.fromarray(g), "TIFF"))
    assert out.format == "TIFF" and out.pixels.shape == (24, 32, 1)
    np.testing.assert_allclose(out.pixels[:, :, 0], g / 255.0, atol=1e-6)

    a16 = g.astype(np.uint16) * 200  # max 255 * 200 = 51000
    out = decode_image(encode(Image.fromarray(a16), "TIFF"))
    assert out.mode.startswith("I;16") and out.pixels.shape == (24, 32, 1)
    np.testing.assert_allclose(out.pixels[:, :, 0], a16 / 65535.0, rtol=1e-6)


def test_tiff_float_is_min_max_and_cmyk_is_rgb() -> None:
    f = np.array([[-2.0, 0.0, np.nan], [2.0, 6.0, np.inf]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(f), "TIFF"))
    assert out.mode == "F" and out.pixels.shape == (2, 3, 1)
    # Min-max over the finite values; NaN / inf become 0.
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25, 0], [0.5, 1.0, 0]], atol=1e-6)

    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red
    out = decode_image(encode(cmyk, "TIFF"))
    assert out.mode == "CMYK" and out.pixels.shape == (2, 2, 3)
    np.testing.assert_allclose(out.pixels[0, 0], [1, 0, 0], atol=1e-6)


def test_tiff_32bit_int_mode_i() -> None:
    in_16bit = np.array([[0, 65535], [1000, 3]], dtype=np.int32)
    out = decode_image(encode(Image.fromarray(in_16bit), "TIFF"))
    assert out.mode == "I"
    np.testing.assert_allclose(out.pixels[:, :, 0], in_16bit / 65535.0, rtol=1e-6)
    signed = np.array([[-10, 0], [10, 30]], dtype=np.int32)  # outside 0..65535: min-max
    out = decode_image(encode(Image.fromarray(signed), "TIFF"))
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_jpeg_gray_and_rgb() -> None:
    g = gradient_u8(48, 64)
    out = decode_image(encode(Image.fromarray(g), "JPEG", quality=95))
    assert (out.format, out.mode, out.size, out.pixels.shape) == (
        "JPEG",
        "L",
        (64, 48),
        (48, 64, 1),
    )
    assert np.abs(out.pixels[:, :, 0] - g / 255.0).max() < 0.03

    rgb = rgb_u8(48, 64)
    out = decode_image(encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert out.pixels.shape == (48, 64, 3) and out.mode == "RGB"
    assert np.abs(out.pixels - rgb / 255.0).mean() < 0.02
    assert out.pixels.min() >= 0.0 and out.pixels.max() <= 1.0


def test_jpeg_exif_orientation_applied() -> None:
    # Stored 40 wide x 20 high, left half white. Orientation 6 = "rotate 90 CW to display".
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert out.size == (20, 40) and out.pixels.shape == (40, 20, 1)
    # After a clockwise turn, the stored left half becomes the top half.
    assert out.pixels[:18, :, 0].mean() > 0.95
    assert out.pixels[22:, :, 0].mean() < 0.05


# ----------------------------------------------------------------------------------- DICOM
def test_dicom_rescale_and_window() -> None:
    stored = np.array([[0, 400, 1000], [1020, 1200, 4000]], dtype=np.uint16)
    data = make_dicom(
        stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    assert data[128:132] == b"DICM"
    out = decode_image(data)
    assert (out.format, out.mode, out.size, out.pixels.shape) == (
        "DICOM",
        "MONOCHROME2",
        (3, 2),
        (2, 3, 1),
    )
    hu = stored.astype(np.float64) - 1024
    expected = np.clip((hu - 39.5) / 399.0 + 0.5, 0, 1)  # DICOM linear window
    np.testing.assert_allclose(out.pixels[:, :, 0], expected, atol=1e-6)
    # Values that matter: -1024 HU and -624 HU are below the window, -4 HU is inside it.
    assert out.pixels[0, 0, 0] == 0.0 and out.pixels[0, 1, 0] == 0.0
    assert out.pixels[1, 0, 0] == pytest.approx((-4 - 39.5) / 399 + 0.5, abs=1e-6)
    assert out.pixels[1, 2, 0] == 1.0


def test_dicom_rescale_slope_without_window_is_min_max() -> None:
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    out = decode_image(make_dicom(stored, RescaleSlope=2, RescaleIntercept=-100))
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto [0, 1], written out independently."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def lut_item(descriptor: list[int], entries: np.ndarray) -> Dataset:
    """A VOI / Modality LUT Sequence item; LUT Data written as 16-bit words (OW)."""
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = entries.astype("<u2").tobytes()
    return item


def test_dicom_rescale_slope_and_intercept_then_window() -> None:
    stored = np.array([[-2000, -200, 0], [150, 200, 3000]], dtype=np.int16)
    data = make_dicom(
        stored, RescaleSlope=0.5, RescaleIntercept=-100, WindowCenter=0, WindowWidth=201
    )
    out = decode_image(data).pixels[:, :, 0]
    expected = linear_window(stored * 0.5 - 100, 0, 201)  # -1100, -200, -100, -25, 0, 1400
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[1, 0] == pytest.approx((-25 + 0.5) / 200 + 0.5, abs=1e-6)
    # A slope without an intercept is still applied (pydicom alone needs both).
    out = decode_image(make_dicom(stored, RescaleSlope=0.5, WindowCenter=0, WindowWidth=201))
    np.testing.assert_allclose(out.pixels[:, :, 0], linear_window(stored * 0.5, 0, 201), atol=1e-6)


def test_dicom_modality_lut_sequence_then_window() -> None:
    stored = np.array([[0, 1000, 1001], [1128, 1255, 4000]], dtype=np.uint16)
    modality = lut_item([4096, 0, 16], np.arange(4096) * 2)  # stored value v -> 2 v
    out = decode_image(
        make_dicom(stored, ModalityLUTSequence=[modality], WindowCenter=2000, WindowWidth=1000)
    )
    expected = linear_window(stored * 2.0, 2000, 1000)
    np.testing.assert_allclose(out.pixels[:, :, 0], expected, atol=1e-6)
    assert out.pixels[0, 1, 0] == pytest.approx(0.5 / 999 + 0.5, abs=1e-6)  # 2000 -> mid-grey


def test_dicom_voi_lut_sequence_is_applied_after_rescale_and_before_the_window() -> None:
    # A decreasing 8-bit LUT over the modality values 1000..1255: nothing a window could give.
    stored = np.array([[0, 1, 128], [255, 300, 5]], dtype=np.uint16)
    voi = lut_item([256, 1000, 8], 255 - np.arange(256))
    data = make_dicom(
        stored,
        RescaleSlope=1,
        RescaleIntercept=1000,
        VOILUTSequence=[voi],
        WindowCenter=40,  # a window is there too: the LUT wins, as in pydicom
        WindowWidth=400,
    )
    out = decode_image(data).pixels[:, :, 0]
    index = np.clip(stored.astype(int), 0, 255)  # modality value - first mapped (1000), clamped
    np.testing.assert_allclose(out, (255 - index) / 255.0, atol=1e-6)
    assert out[0, 0] == 1.0 and out[1, 1] == 0.0 and out[0, 2] == pytest.approx(127 / 255)


def test_dicom_voi_lut_is_scaled_by_its_own_largest_entry() -> None:
    # Declares 16 bits per entry but holds 12-bit values (as many scanners write): 4095 is white,
    # whatever the image's own range (min-max would stretch 100..3000 to 0..1).
    stored = np.array([[100, 1000], [2048, 3000]], dtype=np.uint16)
    voi = lut_item([4096, 0, 16], np.arange(4096))
    out = decode_image(make_dicom(stored, VOILUTSequence=[voi])).pixels[:, :, 0]
    np.testing.assert_allclose(out, stored / 4095.0, atol=1e-6)


@pytest.mark.parametrize(
    "lut",
    [
        lut_item([256, 0, 9], np.arange(256)),  # 9 bits per entry: not allowed, pydicom refuses
        lut_item([256, 0, 8], np.arange(10)),  # LUT Data shorter than its descriptor
    ],
    ids=["bad-depth", "short-data"],
)
def test_dicom_unusable_voi_lut_falls_back_to_the_window(lut: Dataset) -> None:
    stored = np.array([[0, 100], [150, 300]], dtype=np.uint16)
    data = make_dicom(stored, VOILUTSequence=[lut], WindowCenter=150, WindowWidth=101)
    out = decode_image(data).pixels[:, :, 0]
    np.testing.assert_allclose(out, linear_window(stored.astype(float), 150, 101), atol=1e-6)


def test_dicom_unusable_modality_lut_is_ignored() -> None:
    stored = np.array([[0, 100], [150, 300]], dtype=np.uint16)
    modality = lut_item([4096, 0, 12], np.arange(4096))  # 12 bits per entry: pydicom refuses
    data = make_dicom(stored, ModalityLUTSequence=[modality], WindowCenter=150, WindowWidth=101)
    out = decode_image(data).pixels[:, :, 0]  # a 500 (TypeError) before
    np.testing.assert_allclose(out, linear_window(stored.astype(float), 150, 101), atol=1e-6)


def test_dicom_corrupt_header_element_is_a_400() -> None:
    data = make_dicom(np.zeros((4, 4), dtype=np.uint16))
    rows = b"\x28\x00\x10\x00US"  # (0028,0010) Rows, explicit VR US
    assert data.count(rows) == 1
    corrupt = data.replace(rows, b"\x28\x00\x10\x00U3")  # an unknown VR: pydicom raises on access
    with pytest.raises(TruncatedImageError, match="DICOM image header is corrupt"):
        decode_image(corrupt)  # a 500 (NotImplementedError) before


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("LINEAR_EXACT", lambda x: np.clip((x - 2000) / 1000 + 0.5, 0, 1)),
        ("SIGMOID", lambda x: 1 / (1 + np.exp(-4 * (x - 2000) / 1000))),
        ("NOT_A_FUNCTION", lambda x: linear_window(x, 2000, 1000)),  # unknown: LINEAR
    ],
)
def test_dicom_voi_lut_functions(
    function: str, expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    stored = np.array([[0, 1500, 1999], [2000, 2400, 4000]], dtype=np.uint16)
    data = make_dicom(stored, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    out = decode_image(data).pixels[:, :, 0]
    np.testing.assert_allclose(out, expected(stored.astype(float)), atol=1e-6)


def test_dicom_multi_valued_window_uses_the_first_and_width_one_is_a_threshold() -> None:
    stored = np.array([[0, 999], [1000, 4000]], dtype=np.uint16)
    out = decode_image(make_dicom(stored, WindowCenter=[1000, 40], WindowWidth=[1, 400]))
    np.testing.assert_array_equal(out.pixels[:, :, 0], [[0, 0], [1, 1]])  # x > 999.5


@pytest.mark.parametrize(
    ("center", "width"),
    [("NaN", 400), (40, "NaN"), ("inf", 400), (40, "-inf"), (40, 0), (40, -5), ("", 400)],
)
def test_dicom_unusable_window_falls_back_to_min_max(center: object, width: object) -> None:
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns about "NaN" as a DS value
        out = decode_image(make_dicom(stored, WindowCenter=center, WindowWidth=width))
    assert np.isfinite(out.pixels).all()
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_non_finite_rescale_is_ignored() -> None:
    stored = np.array([[0, 100], [150, 300]], dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        data = make_dicom(
            stored, RescaleSlope="NaN", RescaleIntercept="inf", WindowCenter=150, WindowWidth=101
        )
    out = decode_image(data).pixels[:, :, 0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, linear_window(stored.astype(float), 150, 101), atol=1e-6)


def test_dicom_monochrome1_inverted() -> None:
    stored = np.array([[0, 100], [300, 400]], dtype=np.uint16)
    out = decode_image(make_dicom(stored, photometric="MONOCHROME1"))
    assert out.mode == "MONOCHROME1"
    np.testing.assert_allclose(out.pixels[:, :, 0], [[1.0, 0.75], [0.25, 0.0]], atol=1e-6)


def test_dicom_multiframe_uses_first_frame() -> None:
    frames = np.array([[[0, 10], [20, 40]], [[40, 0], [0, 0]]], dtype=np.uint16)
    data = make_dicom(frames[0], NumberOfFrames=2, pixel_bytes=frames.tobytes())
    out = decode_image(data)
    assert out.pixels.shape == (2, 2, 1)
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_without_preamble_is_read() -> None:
    ds = Dataset()  # no file meta, no 'DICM': as some scanners and old archives write it
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.array([[0, 10], [20, 40]], dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    out = decode_image(data)
    assert out.format == "DICOM"
    np.testing.assert_allclose(out.pixels[:, :, 0], [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_rgb() -> None:
    rgb = rgb_u8(4, 6)
    out = decode_image(make_dicom(rgb, photometric="RGB"))
    assert out.pixels.shape == (4, 6, 3) and out.mode == "RGB"
    np.testing.assert_allclose(out.pixels, rgb / 255.0, atol=1e-6)


def test_dicom_pixel_limit_checked_before_pixel_data(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real_pixel_array = pydicom.pixels.pixel_array

    def spy(ds: Dataset, **kwargs: object) -> np.ndarray:
        decoded.append(int(ds.Rows) * int(ds.Columns))
        return real_pixel_array(ds, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    data = make_dicom(np.zeros((30, 40), dtype=np.uint16))
    with pytest.raises(TooManyPixelsError, match="40x30 pixels"):
        decode_image(data, DecodeLimits(max_pixels=100))
    assert decoded == []  # refused from Rows/Columns: the pixel data was never decoded
    assert decode_image(data).size == (40, 30)
    assert decoded == [1200]


def test_dicom_compressed_without_decoder_is_unsupported() -> None:
    stored = np.zeros((4, 4), dtype=np.uint16)
    data = make_dicom(stored, transfer_syntax=JPEGLSLossless, pixel_data=b"\xff\xd8garbage" * 4)
    with pytest.raises(UnsupportedImageError, match="JPEG-LS Lossless") as info:
        decode_image(data)
    assert info.value.status == 415
    assert "uncompressed DICOM" in str(info.value)


def test_dicom_unsupported_photometric_and_transfer_syntax() -> None:
    stored = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(UnsupportedImageError, match="'PALETTE COLOR' is not supported"):
        decode_image(make_dicom(stored, photometric="PALETTE COLOR"))
    mpeg = make_dicom(stored, transfer_syntax=MPEG2MPML, pixel_data=b"\x00\x00\x01\xb3" * 4)
    with pytest.raises(UnsupportedImageError, match="MPEG2 Main Profile"):
        decode_image(mpeg)


def test_dicom_compressed_garbage_with_decoder_is_corrupt() -> None:
    stored = np.zeros((4, 4), dtype=np.uint8)
    data = make_dicom(stored, transfer_syntax=RLELossless, pixel_data=b"not rle at all")
    with pytest.raises(TruncatedImageError, match="DICOM pixel data is truncated or corrupt"):
        decode_image(data)


def test_dicom_truncated_pixel_data() -> None:
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8)
    data = make_dicom(stored)
    with pytest.raises(TruncatedImageError, match="DICOM"):
        decode_image(data[:-40])
    with pytest.raises(TruncatedImageError, match="no pixel data"):
        decode_image(data[:200])


# ----------------------------------------------------------------------------------- helpers
def test_to_uint8_and_encode_png_roundtrip() -> None:
    f = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(f), [[0, 128, 255], [0, 255, 0]])
    np.testing.assert_array_equal(to_uint8(np.array([True, False])), [255, 0])
    with pytest.raises(ValueError, match="uint8"):
        to_uint8(np.zeros(3, dtype=np.int64))

    density = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    png = encode_png(density)
    back = decode_image(png)
    assert back.format == "PNG" and back.pixels.shape == (3, 4, 1)
    np.testing.assert_allclose(back.pixels[:, :, 0], density, atol=0.5 / 255 + 1e-6)

    rgb = rgb_u8(5, 7)
    back = decode_image(encode_png(rgb))
    np.testing.assert_allclose(back.pixels, rgb / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="C in"):
        encode_png(np.zeros((2, 2, 2), dtype=np.uint8))


# ------------------------------------------------------------------------------ real files
@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="../shared/data/real-dev is absent")
@pytest.mark.parametrize(
    ("organ", "channels"), [("brain", None), ("chest", 1), ("kidney", 1), ("lung", 1)]
)
def test_real_dev_first_file_of_each_organ(organ: str, channels: int | None) -> None:
    path = sorted(p for p in (REAL_DEV / organ).iterdir() if p.is_file())[0]
    with Image.open(path) as ref:
        ref_size, ref_mode, ref_format = ref.size, ref.mode, ref.format
        ref_pixels = np.asarray(ref.convert("RGB" if ref.mode == "RGB" else "L"))
    out = load_image_file(path)
    # Brain is a mix of RGB and L JPEGs: C follows the file's mode.
    expected_c = channels if channels is not None else (3 if ref_mode == "RGB" else 1)
    assert out.pixels.shape == (ref_size[1], ref_size[0], expected_c)
    assert (out.size, out.format, out.mode) == (ref_size, ref_format, ref_mode)
    assert out.pixels.dtype == np.float32
    assert out.pixels.min() >= 0.0 and out.pixels.max() <= 1.0
    np.testing.assert_allclose(out.pixels.reshape(ref_pixels.shape), ref_pixels / 255.0, atol=1e-6)
