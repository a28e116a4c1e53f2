"""A hostile input folder, built on the fly: what a folder of files nobody checked holds.

``make_hostile_folder`` writes it and returns, for every entry, what a run must make of it:
``("written",)``, ``("failed", words the failure row's reason contains)`` or ``("skipped",)``.
Everything is small and quick to write: a decompression bomb is a header that declares a huge
image over a few bytes, and the slow JPEG is a few hundred kilobytes of scans.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fixtures import _chunk, _encode, black_png, photo

# Over 2 * 89,478,485: Pillow's own guard refuses these while opening the file.
BOMB = 65_000
# Over --max-pixels' default, under twice it: poolcli's own check refuses these.
LARGE = 10_000


def make_hostile_folder(path: str | Path) -> dict[str, tuple]:
    """Write the hostile inputs into ``path``; return entry name -> expected outcome.

    Names are relative to ``path``; the file with a non-UTF-8 name is keyed by its name as
    Python's ``os.fsdecode`` gives it (with a surrogate escape).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    small = photo().crop((100, 60, 164, 108))  # 64 x 48 RGB
    expected: dict[str, tuple] = {}

    def write(name: str, data: bytes, outcome: tuple) -> None:
        (folder / name).write_bytes(data)
        expected[name] = outcome

    # Truncated and corrupt files, one or two per format.
    encoded = {
        "png": _encode(small, "PNG", compress_level=1),
        "jpg": _encode(small, "JPEG", quality=90),
        "gif": _encode(small.quantize(64), "GIF"),
        "tiff": _encode(small, "TIFF"),
        "webp": _encode(small, "WEBP", lossless=True),
    }
    for ext, data in encoded.items():
        write(f"truncated.{ext}", data[: len(data) // 2], ("failed", "cannot decode image"))
    write("corrupt.png", _flip_middle(encoded["png"]), ("failed", "cannot decode image"))
    write("corrupt_tables.jpg", _corrupt_jpeg_tables(encoded["jpg"]), ("failed", "cannot decode image"))
    write("corrupt.gif", _corrupt_gif(encoded["gif"]), ("failed", "cannot decode image"))
    write("corrupt.tiff", _corrupt_tiff(encoded["tiff"]), ("failed", "cannot identify image"))
    write("corrupt.webp", _corrupt_webp(encoded["webp"]), ("failed", "cannot decode image"))
    # Flipped bytes inside compressed pixels: JPEG and WebP decoders resynchronise and decode
    # the damaged part as garbage, as every viewer shows it; nothing tells it from a real
    # picture. Whether a given flip is caught depends on the decoder's version, so either
    # outcome is right: a written row or a failure row, never a crash.
    write("flipped.jpg", _flip_middle(encoded["jpg"]), ("either",))
    write("flipped.webp", _flip_middle(encoded["webp"]), ("either",))
    write("flipped.tiff", _flip_middle(encoded["tiff"]), ("either",))

    # Decompression bombs: a huge declared size over a few bytes, in each format. Beyond twice
    # Pillow's limit, Pillow refuses them as it opens them; beyond --max-pixels, poolcli does,
    # from the header; both before any pixel is decoded.
    too_large = ("failed", "pixels")
    write("bomb.png", black_png(BOMB, BOMB, pixels=False), too_large)
    write("large.png", black_png(LARGE, LARGE, pixels=False), too_large)
    write("bomb.jpg", _jpeg_with_size(encoded["jpg"], BOMB, BOMB), too_large)
    write("large.jpg", _jpeg_with_size(encoded["jpg"], LARGE, LARGE), too_large)
    write("bomb.gif", gif_header(BOMB, BOMB), too_large)
    write("bomb.tiff", tiff_header(100_000, 100_000), too_large)
    write("bomb.webp", webp_lossless_header(16_383, 16_383), too_large)
    write("bomb.bmp", bmp_header(BOMB, BOMB), too_large)
    write("bomb.npy", npy_header((BOMB, BOMB)), too_large)
    write("text_bomb.png", _png_with_text_bomb(encoded["png"]), ("failed", "cannot decode image"))

    # A JPEG that decodes very slowly: thousands of progressive scans, each a few bytes that
    # make libjpeg walk every block of a 16-megapixel image again.
    write("slow.jpg", slow_progressive_jpeg(4096, 4096, scans=20_000), ("failed", "scans"))

    write("empty.png", b"", ("failed", "empty file"))
    write("unreadable.png", encoded["png"], ("failed", "Permission denied"))
    os.chmod(folder / "unreadable.png", 0)
    os.mkfifo(folder / "pipe.png")  # reading it would wait forever for a writer
    expected["pipe.png"] = ("failed", "not a regular file")

    # Links: to itself, in a loop of folders, to nothing, and a good one.
    os.symlink("self_loop.png", folder / "self_loop.png")
    expected["self_loop.png"] = ("failed", "cannot read file")
    (folder / "loop").mkdir()
    os.symlink("..", folder / "loop" / "up")  # a folder loop: never followed
    os.symlink("missing.png", folder / "dangling.png")
    expected["dangling.png"] = ("failed", "cannot read file")
    write("good.png", encoded["png"], ("written",))
    os.symlink("good.png", folder / "link_to_good.png")
    expected["link_to_good.png"] = ("written",)

    # Awkward names, each a good image.
    for name in ("with space.png", "ünïcödé 猫.png", "new\nline.png", " leading space.png", "-dash.png"):
        write(name, encoded["png"], ("written",))
    raw = os.fsdecode(b"latin1-\xe9t\xe9.png")  # not UTF-8: an old archive's name
    (folder / raw).write_bytes(encoded["png"])
    expected[raw] = ("written",)
    (folder / "folder.png").mkdir()  # a folder with an image's name is walked, not read
    write("folder.png/inside.jpg", encoded["jpg"], ("written",))
    write("notes.txt", b"not an image\n", ("skipped",))
    return expected


# --- corruptions ----------------------------------------------------------------------------------


def _flip_middle(data: bytes, count: int = 16) -> bytes:
    """``count`` bytes from the middle inverted."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + count]) + data[middle + count :]


def _corrupt_jpeg_tables(data: bytes) -> bytes:
    """Every Huffman table (DHT) given impossible code counts."""
    out = bytearray(data)
    start = 0
    while (i := out.find(b"\xff\xc4", start)) != -1:
        out[i + 5 : i + 21] = b"\xff" * 16  # 255 codes of each length: not a Huffman code
        start = i + 2
    return bytes(out)


def _corrupt_gif(data: bytes) -> bytes:
    """The image's LZW minimum code size set to 12, which no decoder accepts."""
    i = data.index(b"\x2c")  # the image descriptor
    local_table = data[i + 9] & 0x80
    size = 3 * 2 ** ((data[i + 9] & 7) + 1) if local_table else 0
    j = i + 10 + size
    return data[:j] + b"\x0c" + data[j + 1 :]


def _corrupt_tiff(data: bytes) -> bytes:
    """The header points to a first directory (IFD) far beyond the end of the file."""
    return data[:4] + struct.pack("<I", 0x7FFFFFF0) + data[8:]


def _corrupt_webp(data: bytes) -> bytes:
    """The lossless bitstream's signature byte (0x2f) zeroed."""
    i = data.index(b"VP8L") + 8
    return data[:i] + b"\x00" + data[i + 1 :]


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF) declares ``width`` x ``height``."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i != -1:
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
    raise ValueError("no SOF marker")


def _png_with_text_bomb(data: bytes) -> bytes:
    """A zTXt chunk that inflates to 64 MiB, before the pixels."""
    compressor = zlib.compressobj(9)
    text = compressor.compress(bytes(64 << 20)) + compressor.flush()
    chunk = _chunk(b"zTXt", b"Comment\x00\x00" + text)
    end_of_header = 8 + 25  # signature + IHDR
    return data[:end_of_header] + chunk + data[end_of_header:]


# --- headers that declare huge images ----------------------------------------------------------------


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and only image are ``width`` x ``height``, with an empty LZW stream."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02" + b"\x01\x44" + b"\x00"  # min code size 2; one block: clear code, end code
    return screen + image + lzw + b"\x3b"


def tiff_header(width: int, height: int) -> bytes:
    """An 8-bit gray little-endian TIFF declaring ``width`` x ``height`` over 8 bytes of pixels."""
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value & 0xFFFFFFFF)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(8)


def webp_lossless_header(width: int, height: int) -> bytes:
    """A lossless WebP of ``width`` x ``height`` transparent black pixels in a few bytes: five
    prefix codes of one symbol each, so that every pixel takes zero bits."""
    bits = [(width - 1, 14), (height - 1, 14), (1, 1), (0, 3)]  # size, alpha used, version 0
    bits += [(0, 1), (0, 1), (0, 1)]  # no transform, no colour cache, no meta prefix codes
    bits += [(1, 1), (0, 1), (0, 1), (0, 1)] * 5  # simple code, one symbol, 1-bit symbol 0
    value = shift = 0
    for field, width_bits in bits:
        value |= field << shift
        shift += width_bits
    payload = b"\x2f" + value.to_bytes((shift + 7) // 8, "little")
    if len(payload) % 2:
        payload += b"\x00"
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP declaring ``width`` x ``height``, without pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` file declaring a float32 array of ``shape``, with 16 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(16)


# --- a JPEG that decodes slowly ----------------------------------------------------------------------


def slow_progressive_jpeg(width: int, height: int, scans: int) -> bytes:
    """A valid progressive 8-bit gray JPEG of ``width`` x ``height`` (multiples of 64): one DC
    scan of zeros, then ``scans`` identical AC scans that each say "every block ends here" in a
    few bytes (EOB runs of 32767 blocks), so that libjpeg goes over every block once per scan.
    The picture is mid-gray."""
    blocks = (width // 8) * (height // 8)

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    quant = segment(0xDB, b"\x00" + bytes([1] * 64))
    frame = segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    dc_table = segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")  # one code "0": DC difference 0
    eob_symbols = bytes(n << 4 for n in range(15))  # EOB0 .. EOB14, 4-bit codes 0000 .. 1110
    ac_table = segment(0xC4, b"\x10" + bytes([0, 0, 0, 15] + [0] * 12) + eob_symbols)
    dc_scan = segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + bytes(blocks // 8)  # one 0 bit per block

    writer = _BitWriter()
    left = blocks
    while left:
        run = min(left, 32767)
        n = run.bit_length() - 1
        writer.put(n, 4)  # the code of EOBn is n itself
        writer.put(run - (1 << n), n)
        left -= run
    ac_scan = segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + writer.bytes()
    return b"\xff\xd8" + quant + frame + dc_table + ac_table + dc_scan + ac_scan * scans + b"\xff\xd9"


class _BitWriter:
    """Most significant bit first, padded with ones, 0xFF stuffed: JPEG's entropy-coded data."""

    def __init__(self):
        self.value, self.count = 0, 0

    def put(self, value: int, bits: int) -> None:
        self.value = (self.value << bits) | value
        self.count += bits

    def bytes(self) -> bytes:
        pad = -self.count % 8
        raw = ((self.value << pad) | ((1 << pad) - 1)).to_bytes((self.count + pad) // 8, "big")
        return raw.replace(b"\xff", b"\xff\x00")
