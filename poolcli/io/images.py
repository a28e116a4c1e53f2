"""Decoding one input file into a float32 ``(C, H, W)`` array, as every command reads an image.

The file is read once: its bytes are hashed, then decoded by content whatever the extension
says. ``.npy`` files are recognised by their magic bytes and taken as they are; everything else
goes to Pillow, limited to the formats poolcli accepts (PNG, JPEG, BMP, TIFF, WebP, GIF's first
frame, AVIF where Pillow was built with libavif, HEIC/HEIF where the optional pillow-heif plugin
is installed), so that no other Pillow plugin (EPS runs Ghostscript) ever sees an input.
pillow-heif is imported and registered with Pillow on the first HEIF file, never before.

An image then goes through these steps:

1. shrink on load (``input.decode: reduced``, the default, when ``input.resize`` shrinks the
   image): a JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8, Pillow's ``draft``) that
   still leaves at least the target size, and an 8-bit gray or RGB image of any format is then
   reduced by Pillow's ``reduce`` (a box average over whole blocks) while at least
   :data:`REDUCING_GAP` times the target remains, so that no full-size float copy of a large
   photo is ever made. ``decode: full`` skips this step (and the next), for results equal to a
   plain full-size Pillow decode;
2. the EXIF orientation is applied (``width`` and ``height`` are reported after it, at the size
   stored in the file, whatever step 1 decoded); an embedded ICC profile of an RGB, RGBA, gray
   or CMYK image is converted to sRGB with Pillow's ImageCms (``decode: reduced`` only: a plain
   Pillow pipeline ignores profiles, and ``full`` gives its pixels); a profile that cannot be
   read or applied makes the file a failure;
3. the pixels become floats: 8-bit / 255, 16-bit / 65535, float kept (see :func:`_to_float`),
   all in float32 from here so that 16-bit precision survives;
4. alpha is composited over ``input.alpha`` (white or black);
5. ``color: gray`` takes the ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B`` (the weights of
   Pillow's ``L`` conversion), ``color: rgb`` repeats a gray image over three channels;
6. ``input.resize`` resamples each channel with Pillow's filter on a mode ``F`` image, to the
   size computed from the stored size.

Mean and std are not applied here: the pipeline does that.

Thread safety: nothing global is changed per call, and Pillow releases the GIL while it
decodes, so :func:`decode` is meant to run in a thread pool. For that reason Pillow's own
process-wide guard, ``PIL.Image.MAX_IMAGE_PIXELS``, is left as it is (setting it per call would
race): it warns (``DecompressionBombWarning``) above its limit and refuses images above twice
it. ``max_pixels`` is checked on top of it, from the header, before any pixel is decoded. An
application that allows larger images than Pillow sets ``PIL.Image.MAX_IMAGE_PIXELS`` once at
start-up.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike

import numpy as np

# Importing the plugins registers exactly the formats poolcli reads, so Image.open never has to
# run Image.init() (which imports every plugin) from a worker thread.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

try:  # Pillow 11.2 and newer; it reads AVIF where it was built with libavif
    from PIL import AvifImagePlugin  # noqa: F401
except ImportError:
    AvifImagePlugin = None

from poolcli.config import InputConfig
from poolcli.errors import ImageError
from poolcli.io.storage import read_bytes
from poolcli.io.tars import TarMember

#: Pillow's ``reduce`` shrinks an image (other than a JPEG, which libjpeg shrinks) only by whole
#: factors that leave at least this many times the target size in each direction, so that the
#: final resize with the config's filter does most of the work: a block that straddles the
#: final filter's windows then weighs little. Box, bilinear and Lanczos resizes of a 2048 x 2048
#: photograph to 128 x 128 after reduce(4) differ from the full ones by at most 0.3, 2.6 and
#: 1.9 / 255 (mean 0.05 to 0.18 / 255); after reduce(5), a gap of 3, by up to 57 / 255.
REDUCING_GAP = 4

#: The ``--max-pixels`` default: Pillow's own ``MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS = 89_478_485

#: Pillow format names tried, in this order. "JPEG" covers camera MPO files too. "HEIF" is
#: added for a file whose ftyp box names a HEIF brand, once pillow-heif is registered.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF") + (("AVIF",) if AvifImagePlugin is not None else ())

#: ISO base media brands (the file's ftyp box) of HEIF images coded with HEVC: HEIC photos.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
HEIF_INSTALL = "pip install 'poolcli[heif]'"

#: Modes whose embedded ICC profile is converted to sRGB (into RGB, RGBA with alpha kept).
#: Others (16-bit, float, palette, LA) keep their values: see :func:`_to_srgb`.
ICC_MODES = ("RGB", "RGBA", "L", "CMYK")

NPY_MAGIC = b"\x93NUMPY"

#: A progressive JPEG with more scans than this is refused before it is decoded: each scan
#: makes libjpeg go over the whole image again, so that a file of a few hundred kilobytes can
#: decode for minutes. TurboJPEG's own guard (TJFLAG_LIMITSCANS) stops at the same number;
#: real progressive JPEGs have about ten.
MAX_JPEG_SCANS = 500

_DEFAULT_INPUT = InputConfig()

# Pillow modes read directly by _to_float, with the value that maps full scale to 1.0. Every
# other mode (P, PA, YCbCr, RGBX, RGBa, HSV, ...) is first converted by Pillow to RGB or RGBA.
_FULL_SCALE = {
    "1": 1.0,
    "L": 255.0,
    "LA": 255.0,
    "RGB": 255.0,
    "RGBA": 255.0,
    "CMYK": 255.0,
    "I;16": 65535.0,
    "I;16L": 65535.0,
    "I;16B": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}

# Modes whose values may exceed [0, 1]: the others are clipped back into it after a resize
# (bicubic and Lanczos overshoot at edges; Pillow clips the same way on 8-bit images).
_UNBOUNDED_MODES = ("I", "F")

_LUMA = (np.float32(0.299), np.float32(0.587), np.float32(0.114))

_QUARTER_TURNS = (5, 6, 7, 8)  # the orientations that swap width and height

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class ImageInfo:
    """What a run records about one decoded input (its metadata row).

    ``width`` and ``height`` are after the EXIF orientation and before any resize; ``mode`` is
    Pillow's mode as stored in the file (``"RGB"``, ``"P"``, ``"I;16"``, ...) or ``"npy"``;
    ``exif_orientation`` is 1 when the file has none; ``sha256`` is the hex digest of the file.
    """

    width: int
    height: int
    mode: str
    exif_orientation: int
    sha256: str


def decode(
    path: str | PathLike,
    input_config: InputConfig | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode one file into a float32 ``(C, H, W)`` array, as a run does.

    Parameters
    ----------
    path : str, path-like or TarMember
        An image (PNG, JPEG, BMP, TIFF, WebP, GIF, AVIF, HEIC) or ``.npy`` file, recognised by
        its content; or a member of a tar shard (:mod:`poolcli.io.tars`).
    input_config : InputConfig, optional
        Colour, alpha background, resize and interpolation; the defaults when omitted (RGB over
        white, native size). ``.npy`` arrays ignore it: they are taken as they are.
    max_pixels : int or None
        Images with more pixels (width x height, read from the header) are refused before they
        are decoded. None leaves only Pillow's own limit.

    Returns
    -------
    array : ndarray, float32, shape (C, H, W)
        C-contiguous and writable; C is 3 for ``color: rgb``, 1 for ``gray``, as stored for
        ``.npy``. Integer images are in [0, 1]; float images keep their values.
    info : ImageInfo

    Raises
    ------
    ImageError
        With a one-line reason: unreadable or empty file, unknown content, truncated or corrupt
        data, too many pixels, an unusable ``.npy`` array. ``MemoryError`` is not turned into
        an ImageError: it says the machine is short of memory, not that the file is bad, and a
        failure row must not depend on how busy the machine was.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     np.save(f"{folder}/a.npy", np.ones((4, 5), np.uint8))
    ...     array, info = decode(f"{folder}/a.npy")
    >>> array.shape, array.dtype, info.mode, (info.width, info.height)
    ((1, 4, 5), dtype('float32'), 'npy', (5, 4))
    """
    config = input_config if input_config is not None else _DEFAULT_INPUT
    data = _read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    if data.startswith(NPY_MAGIC):
        array = _decode_npy(data, max_pixels)
        return array, ImageInfo(array.shape[2], array.shape[1], "npy", 1, sha256)
    with _pillow_errors():
        color, alpha, mode, orientation, (width, height) = _decode_pixels(data, max_pixels, config)
    size = config.resize.target(height, width) if config.resize is not None else None
    array = _prepare(color, alpha, config, size, bounded=mode not in _UNBOUNDED_MODES)
    return array, ImageInfo(width, height, mode, orientation, sha256)


def load_image(
    path: str | PathLike,
    input_config: InputConfig | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The float32 ``(C, H, W)`` array of :func:`decode`, without its :class:`ImageInfo`."""
    return decode(path, input_config, max_pixels)[0]


def probe_shape(path: str | PathLike, input_config: InputConfig | None = None) -> tuple[int, int, int]:
    """The ``(C, H, W)`` that :func:`decode` returns for ``path``, without decoding its pixels.

    Reads the header (size and EXIF orientation) and applies ``input_config``'s colour and
    resize; a ``.npy`` array's own shape. Raises :class:`ImageError` as :func:`decode` does.
    """
    config = input_config if input_config is not None else _DEFAULT_INPUT
    data = _read_bytes(path)
    if data.startswith(NPY_MAGIC):
        return _decode_npy(data, None).shape
    with _pillow_errors(), _open_image(data) as image:
        width, height = image.size
        if image.format != "HEIF" and _exif_orientation(image) in _QUARTER_TURNS:  # libheif turns HEIFs itself
            width, height = height, width
    if config.resize is not None:
        height, width = config.resize.target(height, width)
    return config.channels, height, width


# --- reading ---------------------------------------------------------------------------------


def _read_bytes(path) -> bytes:
    try:
        if isinstance(path, TarMember):
            data = path.read()  # its bytes in the shard, local or remote
        else:
            _refuse_special_file(path)
            data = read_bytes(path)  # a local path, or an fsspec URL
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or _describe(exc)}") from exc
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def _refuse_special_file(path) -> None:
    """A named pipe, socket or device under an image's name: reading it could wait forever
    (a pipe without a writer) or never end (``/dev/zero``)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
        return  # missing, a broken link or a URL: the read says what is wrong
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ImageError(f"not a regular file: {kind}")


def _describe(exc: BaseException) -> str:
    """``"OSError: image file is truncated"``: the type and message on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def _pillow_errors():
    """Any exception from Pillow becomes a one-line ImageError, MemoryError excepted."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"cannot decode image: {_describe(exc)}") from exc


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )


def _decode_npy(data: bytes, max_pixels: int | None) -> np.ndarray:
    """An ``(H, W)`` or ``(C, H, W)`` numeric array, as float32 ``(C, H, W)``, unscaled.

    The header is checked first: a few bytes can declare an array of any size, and loading
    allocates what they declare."""
    try:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except Exception as exc:  # not a header numpy can read
        raise ImageError(f"cannot load .npy array: {_describe(exc)}") from exc
    if len(shape) in (2, 3):
        _check_pixels(shape[-1], shape[-2], max_pixels)
    if not dtype.hasobject and len(data) - stream.tell() < int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise ImageError(f"cannot load .npy array: truncated, {shape} of {dtype} in a file of {len(data)} bytes")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # object arrays (ValueError), truncated data, bad headers
        raise ImageError(f"cannot load .npy array: {_describe(exc)}") from exc
    if array.ndim not in (2, 3):
        raise ImageError(f".npy array has shape {array.shape}; expected (H, W) or (C, H, W)")
    if array.dtype.kind not in "biuf":
        raise ImageError(f".npy array has dtype {array.dtype}; expected bool, integer or float values")
    if array.size == 0:
        raise ImageError(f".npy array is empty: shape {array.shape}")
    _check_pixels(array.shape[-1], array.shape[-2], max_pixels)
    if array.ndim == 2:
        array = array[np.newaxis]
    return np.array(array, dtype=np.float32, order="C")


def _open_image(data: bytes) -> Image.Image:
    """Pillow's lazy image (header read, no pixels yet) for one of the accepted formats."""
    formats = FORMATS
    if _heif_brands(data) & HEIF_BRANDS:
        if not _heif_registered():
            raise ImageError(f"HEIC/HEIF image: reading it needs the pillow-heif plugin ({HEIF_INSTALL})")
        formats = formats + ("HEIF",)
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise ImageError("cannot identify image file: not PNG, JPEG, BMP, TIFF, WebP, GIF, AVIF, HEIC or .npy "
                         "content") from None


def _heif_brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO base media file's leading ftyp box (none if
    ``data`` does not start with one)."""
    if data[4:8] != b"ftyp":
        return set()
    end = min(len(data), int.from_bytes(data[:4], "big"), 4096)
    return {data[8:12]} | {data[at:at + 4] for at in range(16, end - 3, 4)}


_heif_lock = threading.Lock()
_heif_state: list[bool] = []  # [True] once pillow-heif is registered, [False] when it is missing


def _heif_registered() -> bool:
    """Register pillow-heif's HEIF opener with Pillow, once; False where it is not installed."""
    if not _heif_state:
        with _heif_lock:
            if not _heif_state:
                try:
                    import pillow_heif
                except ImportError:
                    _heif_state.append(False)
                else:
                    pillow_heif.register_heif_opener()
                    _heif_state.append(True)
    return _heif_state[0]


def _decode_pixels(data: bytes, max_pixels: int | None, config: InputConfig):
    """(color (c, h, w), alpha (h, w) or None, stored mode, EXIF orientation, upright (W, H)),
    upright; (h, w) is smaller than (H, W) where the image was shrunk on load."""
    with _open_image(data) as image:
        _check_pixels(image.width, image.height, max_pixels)
        jpeg = image.format in ("JPEG", "MPO")
        if jpeg:
            _check_jpeg_scans(data)
        mode, stored = image.mode, image.size
        shrink = config.decode == "reduced" and config.resize is not None
        if shrink and jpeg:  # a JPEG's EXIF is in its header: the orientation is known before decoding
            _draft(image, config.resize, _exif_orientation(image))
        image.load()  # raises on truncated data: ImageFile.LOAD_TRUNCATED_IMAGES stays False
        # libheif decodes a HEIF upright already, by the file's own rotation boxes
        turn = 1 if image.format == "HEIF" else _exif_orientation(image)
        upright = image.transpose(_UPRIGHT[turn]) if turn != 1 else image
        size = stored[::-1] if turn in _QUARTER_TURNS else stored
        orientation = _heif_orientation(image) if image.format == "HEIF" else turn
        if shrink:
            upright = _reduce(upright, config.resize.target(size[1], size[0]))
        if config.decode == "reduced":
            upright = _to_srgb(upright)
        color, alpha = _to_float(upright)
    return color, alpha, mode, orientation, size


def _draft(image: Image.Image, resize, orientation: int) -> None:
    """Have libjpeg decode ``image`` at the largest DCT scale (1/2, 1/4 or 1/8) that leaves at
    least the size ``resize`` asks of the upright image, in each direction."""
    width, height = image.size
    if orientation in _QUARTER_TURNS:
        target_w, target_h = resize.target(width, height)  # the upright image's (H, W) is (width, height)
    else:
        target_h, target_w = resize.target(height, width)
    if target_w < width and target_h < height:
        image.draft(image.mode, (target_w, target_h))  # Pillow picks the scale: ceil(size / scale) >= target


def _reduce(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` box-averaged over whole blocks (Pillow's ``reduce``, in 8 bits) by the largest
    factors that leave :data:`REDUCING_GAP` times ``target`` (H, W); unchanged where none does,
    and for modes other than 8-bit gray and RGB (alpha would need premultiplying first)."""
    if image.mode not in ("L", "RGB"):
        return image
    factor_x = max(1, image.width // (REDUCING_GAP * target[1]))
    factor_y = max(1, image.height // (REDUCING_GAP * target[0]))
    if factor_x == factor_y == 1:
        return image
    return image.reduce((factor_x, factor_y))


def _heif_orientation(image: Image.Image) -> int:
    """The EXIF orientation a HEIF file was stored with: pillow-heif applies it while decoding
    (through the file's own rotation boxes) and keeps the stored value aside."""
    value = image.info.get("original_orientation")
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _check_jpeg_scans(data: bytes) -> None:
    """ImageError if the (first) JPEG in ``data`` has more than :data:`MAX_JPEG_SCANS` scans.

    Walks the markers: segments are skipped by their length (an EXIF thumbnail's scans are
    not counted), entropy-coded data up to the next marker that is not a stuffed byte or a
    restart."""
    scans, at, end = 0, 2, len(data)
    while (at := data.find(b"\xff", at)) != -1 and at + 1 < end:
        marker = data[at + 1]
        if marker == 0xD9:  # end of image: an MPO's other pictures are not decoded
            return
        if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:  # stuffing, fill, restarts
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(f"progressive JPEG with more than {MAX_JPEG_SCANS} scans: each decodes the whole "
                                 "image again, refused as too slow to decode")
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 to 8; 1 when absent, invalid, or the EXIF block is unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # broken EXIF does not make a broken photo: show it as stored
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _to_srgb(image: Image.Image) -> Image.Image:
    """``image`` with its embedded ICC profile converted to sRGB (Pillow's ImageCms, LittleCMS,
    perceptual intent); unchanged without a profile, or in a mode outside :data:`ICC_MODES`.
    Gray and CMYK images become RGB. A profile that LittleCMS cannot read, or that does not fit
    the image (an RGB profile on a gray image), raises ImageError."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ICC_MODES:
        return image
    try:
        return _srgb_transform(profile, image.mode).apply(image)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # ImageCms.PyCMSError, OSError, ValueError, TypeError
        raise ImageError(f"cannot apply the image's ICC colour profile: {_describe(exc)}") from exc


@functools.lru_cache(maxsize=32)
def _srgb_transform(profile: bytes, mode: str):
    """A LittleCMS transform from ``profile`` to sRGB for images of ``mode``, made once per
    profile (photos of one camera share theirs). NOCACHE: LittleCMS's one-pixel cache would be
    shared by the decoding threads."""
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return ImageCms.buildTransform(source, _srgb_profile(), mode, "RGBA" if mode == "RGBA" else "RGB",
                                   flags=ImageCms.Flags.NOCACHE)


@functools.cache
def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# --- pixels to floats ------------------------------------------------------------------------


def _to_float(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """The colour channels ``(c, H, W)`` and alpha ``(H, W)`` (None if opaque) as float32.

    ======================  =================================================================
    mode                    becomes
    ======================  =================================================================
    1                       0 or 1
    L, LA, RGB, RGBA        / 255 (alpha split off); an L or RGB colour key (PNG tRNS) is
                            turned into alpha by Pillow first
    CMYK                    ``(1 - C)(1 - K)``, ... per channel, in float (Pillow's formula
                            without its 8-bit rounding; Adobe's inverted CMYK JPEGs are
                            un-inverted by Pillow's decoder). ICC profiles are not applied,
                            as for every mode.
    I;16, I;16L, I;16B      / 65535
    I (32-bit int)          / 65535 as well: in the formats read, mode I holds 16-bit samples
                            (16-bit PNGs in older Pillow, some 16-bit TIFFs), which then equal
                            their I;16 twins exactly. Genuine 32-bit data keeps its ratios and
                            may exceed 1, like a float image; the scale never depends on the
                            pixel values, so all images of one source are scaled alike.
    F                       kept as is
    P, PA, YCbCr, ...       converted by Pillow to RGB, or RGBA when there is transparency
    ======================  =================================================================

    Pillow itself reads 16-bit RGB and gray+alpha PNGs as 8-bit RGB/RGBA, so their low byte
    is lost before this point.
    """
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert({"L": "LA", "RGB": "RGBA"}[image.mode])
    elif image.mode not in _FULL_SCALE:
        has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(image)
    pixels = pixels[np.newaxis] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
    values = np.array(pixels, dtype=np.float32, order="C")  # one copy, straight to (c, H, W)
    scale = _FULL_SCALE[image.mode]
    if scale != 1.0:
        values /= np.float32(scale)
    if image.mode == "CMYK":
        ink = 1.0 - values
        return ink[:3] * ink[3], None
    if image.mode in ("LA", "RGBA"):
        return values[:-1], values[-1]
    return values, None


def _prepare(color: np.ndarray, alpha: np.ndarray | None, config: InputConfig, size: tuple[int, int] | None,
             bounded: bool) -> np.ndarray:
    """Composite, convert colour, resize to ``size`` (H, W; None: as it is): the float steps
    after decoding."""
    if alpha is not None:
        background = np.float32(1.0 if config.alpha == "white" else 0.0)
        color = background + (color - background) * alpha
    if config.color == "gray" and color.shape[0] == 3:
        color = (_LUMA[0] * color[0] + _LUMA[1] * color[1] + _LUMA[2] * color[2])[np.newaxis]
    if size is not None:
        color = _resize(color, size, config.interpolation, bounded)
    if config.color == "rgb" and color.shape[0] == 1:
        color = np.repeat(color, 3, axis=0)
    return np.ascontiguousarray(color, dtype=np.float32)


def _resize(planes: np.ndarray, size: tuple[int, int], interpolation: str, bounded: bool) -> np.ndarray:
    """Each ``(H, W)`` plane resampled to ``size`` (H, W) by Pillow on a float32 ``F`` image."""
    height, width = size
    if planes.shape[1:] == (height, width):
        return planes
    resample = _RESAMPLE[interpolation]
    resized = np.stack([np.asarray(Image.fromarray(plane).resize((width, height), resample)) for plane in planes])
    if bounded:
        np.clip(resized, 0.0, 1.0, out=resized)
    return resized
