"""Awkward input files, built on the fly from a real photograph in ``sample_images/``.

``make_awkward_folder`` writes the folder of the foundation issue's acceptance list: the inputs
a real image collection throws at a decoder. Everything is small and quick to write, the
144-megapixel PNG included (it is built from one repeated compressed block).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_images"
PHOTO = SAMPLE_IMAGES / "chelsea.png"  # RGB, 451 x 300, lossless

HUGE_SIZE = 12_000  # the huge PNG is HUGE_SIZE x HUGE_SIZE: 144 megapixels


def photo() -> Image.Image:
    """The RGB photograph every awkward file is made from."""
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


def photo_luma() -> np.ndarray:
    """The photograph as float64 gray in [0, 1], with the fractions 8 bits cannot hold."""
    rgb = np.asarray(photo(), dtype=np.float64) / 255
    return rgb @ np.array([0.299, 0.587, 0.114])


def make_awkward_folder(path: str | Path) -> dict[str, Path]:
    """Write the awkward inputs into ``path`` (created if needed); return file name -> path.

    ========================  ================================================================
    file                      what it is
    ========================  ================================================================
    empty.png                 0 bytes
    not_an_image.jpg          a text file with an image extension
    truncated.png             the photo as PNG, cut in the middle of its pixel data
    huge.png                  a valid 12000 x 12000 (144 megapixel) black PNG, mode L
    gray16.png, gray8.png     the photo's luma as a 16-bit PNG (I;16) and its 8-bit twin
    cmyk.jpg                  the photo as a CMYK JPEG, with a real black (K) channel
    palette.gif               the photo quantised to 256 colours
    rgba.png                  the photo with a left-to-right alpha ramp (0 to 255)
    exif_rotated.jpg          a 448 x 288 crop stored rotated, EXIF orientation 6
    upright.jpg               the same crop stored upright
    one_pixel.png             1 x 1 RGB
    photo.tiff                the photo, uncompressed TIFF
    photo.webp                the photo, lossless WebP
    photo.bmp                 the photo, BMP
    array.npy                 the photo as float32 (3, H, W) in [0, 1]
    notes.txt                 plain text, not an input (the walker skips it)
    ========================  ================================================================
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = photo()
    files: dict[str, Path] = {}

    def out(name: str) -> Path:
        files[name] = folder / name
        return files[name]

    out("empty.png").write_bytes(b"")
    out("not_an_image.jpg").write_text("This is a text file that calls itself a JPEG.\n")
    png = _encode(rgb, "PNG", compress_level=1)
    out("truncated.png").write_bytes(png[: len(png) // 2])
    out("huge.png").write_bytes(black_png(HUGE_SIZE, HUGE_SIZE))

    luma = photo_luma()
    Image.fromarray(np.round(luma * 65535).astype(np.uint16)).save(out("gray16.png"), compress_level=1)
    Image.fromarray(np.round(luma * 255).astype(np.uint8)).save(out("gray8.png"), compress_level=1)

    Image.fromarray(_cmyk_with_black(np.asarray(rgb)), "CMYK").save(out("cmyk.jpg"), quality=95)
    rgb.quantize(256, method=Image.Quantize.FASTOCTREE).save(out("palette.gif"))
    rgba = rgb.copy()
    ramp = np.linspace(0, 255, rgb.width).round().astype(np.uint8)
    rgba.putalpha(Image.fromarray(np.broadcast_to(ramp, (rgb.height, rgb.width)).copy()))
    rgba.save(out("rgba.png"), compress_level=1)

    upright = rgb.crop((0, 0, 448, 288))  # multiples of 16: JPEG blocks line up after rotating
    upright.save(out("upright.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    upright.transpose(Image.Transpose.ROTATE_90).save(out("exif_rotated.jpg"), quality=95, exif=exif)

    rgb.crop((200, 150, 201, 151)).save(out("one_pixel.png"))
    rgb.save(out("photo.tiff"))
    rgb.save(out("photo.webp"), lossless=True, method=0)
    rgb.save(out("photo.bmp"))
    np.save(out("array.npy"), np.moveaxis(np.asarray(rgb, np.float32) / 255, 2, 0).copy())
    out("notes.txt").write_text("Notes about this folder: not an image.\n")
    return files


def black_png(width: int, height: int, pixels: bool = True) -> bytes:
    """A black 8-bit gray PNG, written directly (no big array); header only if not ``pixels``."""
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))]
    if pixels:
        chunks.append(_chunk(b"IDAT", _zeros_zlib(height * (width + 1))))  # filter byte + row
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zeros_zlib(count: int) -> bytes:
    """A zlib stream of ``count`` zero bytes without compressing them all.

    A fresh compressor flushed with Z_FULL_FLUSH emits a block that refers to nothing before it,
    so one compressed megabyte of zeros can be repeated; the Adler-32 of n zeros is (n, 1).
    """

    def deflate(n: int, final: bool) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: no header
        return compressor.compress(bytes(n)) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    block = 1 << 20
    repeats, rest = divmod(count, block)
    adler = (count % 65521) << 16 | 1
    return b"\x78\x9c" + deflate(block, False) * repeats + deflate(rest, True) + struct.pack(">I", adler)


def _cmyk_with_black(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 CMYK with K = 1 - max(R, G, B), so that (1 - C)(1 - K) = R, ..."""
    x = rgb.astype(np.float64) / 255
    k = 1 - x.max(axis=2)
    cmy = (1 - x - k[..., None]) / np.maximum(1 - k, 1e-9)[..., None]
    return np.round(np.dstack([cmy, k]) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# Display P3's primaries adapted to the D50 white of ICC profiles (as in Apple's profile): the
# colorant tags of a matrix-shaper profile. P3 shares sRGB's tone curve and white point.
DISPLAY_P3_COLORANTS = {b"rXYZ": (0.515121, 0.241196, -0.001053), b"gXYZ": (0.291977, 0.692245, 0.041885),
                        b"bXYZ": (0.157104, 0.066574, 0.784073)}


def display_p3_profile() -> bytes:
    """A Display P3 ICC profile: LittleCMS's own sRGB profile (from Pillow's ImageCms) with the
    P3 colorants written into its rXYZ, gXYZ and bXYZ tags."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", data[128:132])
    for index in range(count):
        signature, offset, _ = struct.unpack(">4sII", data[132 + 12 * index:144 + 12 * index])
        if signature in DISPLAY_P3_COLORANTS:  # an XYZ tag: "XYZ ", 4 reserved bytes, 3 s15Fixed16
            values = [round(v * 65536) for v in DISPLAY_P3_COLORANTS[signature]]
            data[offset + 8:offset + 20] = struct.pack(">3i", *values)
    data[84:100] = bytes(16)  # the profile id (an MD5 of the rest) is optional: left out
    return bytes(data)
