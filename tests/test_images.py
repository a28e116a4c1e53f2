"""Decoding one input file (SPEC section 2), on the awkward folder and on hand-made files."""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import HUGE_SIZE, PHOTO, SAMPLE_IMAGES, black_png, make_awkward_folder, photo, photo_luma
from poolcli.config import InputConfig
from poolcli.errors import ImageError
from poolcli.io.images import DEFAULT_MAX_PIXELS, decode, load_image, probe_shape

GRAY = InputConfig(color="gray")
BLACK = InputConfig(alpha="black")
ignore_bomb_warning = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_awkward_folder(tmp_path_factory.mktemp("awkward"))


@pytest.fixture(scope="module")
def photo_rgb():
    """The source photograph as float32 (3, H, W) in [0, 1]."""
    return np.moveaxis(np.asarray(photo(), np.float32) / 255, 2, 0)


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


# --- the awkward folder ----------------------------------------------------------------------


@ignore_bomb_warning
@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.png", r"^empty file \(0 bytes\)$"),
        ("not_an_image.jpg", r"^cannot identify image file"),
        ("truncated.png", r"^cannot decode image: OSError: image file is truncated"),
        ("huge.png", r"^image too large: 12000x12000 = 144000000 pixels, more than the limit of 89478485$"),
        ("notes.txt", r"^cannot identify image file"),
    ],
)
def test_broken_inputs_raise_a_one_line_reason(files, name, reason):
    with pytest.raises(ImageError, match=reason) as caught:
        decode(files[name])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "name, mode", [("photo.tiff", "RGB"), ("photo.webp", "RGB"), ("photo.bmp", "RGB"), ("gray8.png", "L")]
)
def test_lossless_formats_give_the_pixels_over_255(files, photo_rgb, name, mode):
    array, info = decode(files[name])
    assert (info.mode, info.width, info.height, info.exif_orientation) == (mode, 451, 300, 1)
    assert array.shape == (3, 300, 451) and array.dtype == np.float32
    assert array.flags.c_contiguous and array.flags.writeable
    if mode == "RGB":
        np.testing.assert_array_equal(array, photo_rgb)


def test_info_hashes_the_file_bytes(files):
    _, info = decode(files["photo.bmp"])
    assert info.sha256 == hashlib.sha256(files["photo.bmp"].read_bytes()).hexdigest()


def test_16_bit_png_equals_its_8_bit_twin(files):
    sixteen, info16 = decode(files["gray16.png"], GRAY)
    eight, info8 = decode(files["gray8.png"], GRAY)
    assert (info16.mode, info8.mode) == ("I;16", "L")
    assert sixteen.shape == eight.shape == (1, 300, 451)
    np.testing.assert_allclose(sixteen[0], photo_luma(), atol=0.5 / 65535 + 1e-7)  # 16 bits kept
    assert np.abs(sixteen - eight).max() <= 0.5 / 255 + 1e-6
    for interpolation in ("bilinear", "lanczos"):
        config = InputConfig(color="gray", resize={"longest": 100}, interpolation=interpolation)
        assert np.abs(load_image(files["gray16.png"], config) - load_image(files["gray8.png"], config)).max() < 1 / 255


def test_exif_rotated_jpeg_matches_the_upright_one(files):
    rotated, info = decode(files["exif_rotated.jpg"])
    upright, upright_info = decode(files["upright.jpg"])
    assert info.exif_orientation == 6 and upright_info.exif_orientation == 1
    assert (info.width, info.height) == (upright_info.width, upright_info.height) == (448, 288)
    assert rotated.shape == upright.shape == (3, 288, 448)
    assert np.abs(rotated - upright).mean() < 0.01


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_shows_the_image_upright(tmp_path, orientation):
    upright = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2)
    to_store = {  # the inverse of the transpose that shows each orientation upright
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(to_store[orientation]) if orientation != 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    array, info = decode(save(stored, tmp_path / "o.png", exif=exif))
    assert (info.exif_orientation, info.width, info.height) == (orientation, 6, 4)
    np.testing.assert_array_equal(array, np.moveaxis(np.asarray(upright, np.float32) / 255, 2, 0))


def test_cmyk_jpeg_is_converted_with_its_black_channel(files, photo_rgb):
    array, info = decode(files["cmyk.jpg"])
    assert info.mode == "CMYK" and array.shape == (3, 300, 451)
    with Image.open(files["cmyk.jpg"]) as image:
        c, m, y, k = np.moveaxis(np.asarray(image, np.float32) / 255, 2, 0)
    np.testing.assert_allclose(array, np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)]), atol=1e-6)
    assert np.abs(array - photo_rgb).mean() < 0.02  # the photo comes back, give or take JPEG


def test_palette_gif(files):
    array, info = decode(files["palette.gif"])
    assert info.mode == "P"
    with Image.open(files["palette.gif"]) as image:
        expected = np.moveaxis(np.asarray(image.convert("RGB"), np.float32) / 255, 2, 0)
    np.testing.assert_array_equal(array, expected)


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    np.testing.assert_array_equal(load_image(path)[:, 0, 0], [1, 0, 0])


@pytest.mark.parametrize("config, background", [(InputConfig(), 1.0), (BLACK, 0.0)])
def test_rgba_is_composited_over_the_background(files, photo_rgb, config, background):
    array, info = decode(files["rgba.png"], config)
    assert info.mode == "RGBA" and array.shape == (3, 300, 451)
    alpha = np.linspace(0, 255, 451).round().astype(np.float32) / 255
    np.testing.assert_allclose(array, photo_rgb * alpha + background * (1 - alpha), atol=1e-6)
    np.testing.assert_array_equal(array[:, :, 0], background)  # alpha 0 in the first column


@pytest.mark.parametrize("config, background", [(InputConfig(), 1.0), (BLACK, 0.0)])
def test_palette_with_transparency(tmp_path, config, background):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1, 0])
    path = save(image, tmp_path / "t.png", transparency=1)
    expected = [[1, background, 1], [0, background, 0], [0, background, 0]]  # (C, W) of the one row
    np.testing.assert_array_equal(load_image(path, config)[:, 0, :], expected)


@pytest.mark.parametrize("config, background", [(GRAY, 1.0), (InputConfig(color="gray", alpha="black"), 0.0)])
def test_la_image(tmp_path, config, background):
    image = Image.fromarray(np.array([[[102, 255], [102, 0], [102, 51]]], np.uint8), "LA")
    array, info = decode(save(image, tmp_path / "la.png"), config)
    assert info.mode == "LA" and array.shape == (1, 1, 3)
    np.testing.assert_allclose(array[0, 0], [0.4, background, 0.4 * 0.2 + background * 0.8], atol=1e-6)
    assert load_image(tmp_path / "la.png").shape == (3, 1, 3)


def test_one_bit_image(tmp_path):
    image = Image.fromarray(np.array([[0, 255, 0], [255, 255, 0]], np.uint8)).convert("1")
    array, info = decode(save(image, tmp_path / "bw.png"), GRAY)
    assert info.mode == "1"
    np.testing.assert_array_equal(array[0], [[0, 1, 0], [1, 1, 0]])


def test_mode_i_is_scaled_like_16_bit(tmp_path):
    values = np.array([[0, 257, 65535], [1000, 30000, 50000]])
    array, info = decode(save(Image.fromarray(values.astype(np.int32)), tmp_path / "i.tiff"), GRAY)
    twin = load_image(save(Image.fromarray(values.astype(np.uint16)), tmp_path / "i16.png"), GRAY)
    assert info.mode == "I"
    np.testing.assert_array_equal(array[0], (values / 65535).astype(np.float32))
    np.testing.assert_array_equal(array, twin)


def test_big_endian_16_bit_tiff(tmp_path):
    values = np.array([[0, 256, 65535]], np.uint16)
    image = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    array, info = decode(save(image, tmp_path / "be.tiff"), GRAY)
    assert info.mode == "I;16B"
    np.testing.assert_array_equal(array[0], values / np.float32(65535))


def test_float_image_is_kept_as_is(tmp_path):
    values = np.array([[-2.5, 0.0, 3.75], [1e-3, 100.0, 0.5]], np.float32)
    array, info = decode(save(Image.fromarray(values), tmp_path / "f.tiff"), GRAY)
    assert info.mode == "F"
    np.testing.assert_array_equal(array[0], values)
    config = InputConfig(color="gray", resize={"size": [4, 6]}, interpolation="nearest")
    resized = load_image(tmp_path / "f.tiff", config)
    assert resized.max() == 100.0 and resized.min() == -2.5  # not clipped to [0, 1]


def test_ycbcr_tiff(tmp_path, photo_rgb):
    array, info = decode(save(photo().convert("YCbCr"), tmp_path / "y.tiff"))
    assert info.mode == "YCbCr"
    with Image.open(tmp_path / "y.tiff") as image:
        np.testing.assert_array_equal(array, np.moveaxis(np.asarray(image.convert("RGB"), np.float32) / 255, 2, 0))
    assert np.abs(array - photo_rgb).max() <= 4 / 255  # 8-bit rounding, there and back


def test_gray_uses_pillows_luma_weights_in_float(photo_rgb):
    gray = load_image(PHOTO, GRAY)
    assert gray.shape == (1, 300, 451)
    pillow_l = np.asarray(photo().convert("L"), np.float32) / 255  # rounded to 8 bits
    assert np.abs(gray[0] - pillow_l).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_allclose(gray[0], photo_luma(), atol=1e-6)


def test_gray_image_as_rgb_repeats_the_channel():
    array, info = decode(SAMPLE_IMAGES / "camera.png")
    assert info.mode == "L" and array.shape == (3, 512, 512)
    assert (array[0] == array[1]).all() and (array[0] == array[2]).all()


def test_one_pixel_png(files, photo_rgb):
    array, info = decode(files["one_pixel.png"])
    assert (info.width, info.height) == (1, 1)
    np.testing.assert_array_equal(array[:, 0, 0], photo_rgb[:, 150, 200])


# --- resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resize, shape",
    [
        ({"longest": 100}, (67, 100)),
        ({"shortest": 60}, (60, 90)),
        ({"size": [32, 48]}, (32, 48)),
        ({"longest": 451}, (300, 451)),
    ],
)
def test_resize_modes(resize, shape):
    array, info = decode(PHOTO, InputConfig(resize=resize))
    assert array.shape == (3, *shape) and array.flags.c_contiguous
    assert (info.width, info.height) == (451, 300)  # before the resize


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos", "box"])
def test_each_interpolation_matches_pillows_filter(photo_rgb, interpolation):
    array = load_image(PHOTO, InputConfig(resize={"size": [70, 101]}, interpolation=interpolation))
    resample = getattr(Image.Resampling, interpolation.upper())
    expected = np.moveaxis(np.asarray(photo().resize((101, 70), resample), np.float32) / 255, 2, 0)
    assert array.shape == (3, 70, 101)
    # Pillow's 8-bit resize rounds after each pass; other filters differ by 8/255 or more
    assert np.abs(array - expected).max() < 1.5 / 255 and np.abs(array - expected).mean() < 0.4 / 255
    assert array.min() >= 0 and array.max() <= 1


def test_resize_of_a_gray_photo_to_rgb():
    array = load_image(SAMPLE_IMAGES / "coins.png", InputConfig(resize={"longest": 64}))
    assert array.shape == (3, 50, 64) and (array[0] == array[2]).all()


# --- .npy ------------------------------------------------------------------------------------


def test_npy_from_the_folder(files, photo_rgb):
    array, info = decode(files["array.npy"], InputConfig(color="gray", resize={"longest": 10}))
    assert (info.mode, info.width, info.height, info.exif_orientation) == ("npy", 451, 300, 1)
    np.testing.assert_array_equal(array, photo_rgb)  # no colour conversion, no resize


def test_npy_2d_and_3d_are_cast_not_scaled(tmp_path):
    np.save(tmp_path / "two.npy", np.array([[0, 255], [7, 65535]], np.uint16))
    np.save(tmp_path / "three.npy", np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 5))
    two, info = decode(tmp_path / "two.npy")
    assert two.shape == (1, 2, 2) and (info.width, info.height) == (2, 2)
    np.testing.assert_array_equal(two[0], [[0, 255], [7, 65535]])
    three = load_image(tmp_path / "three.npy")
    assert three.dtype == np.float32 and three.flags.c_contiguous and three.flags.writeable
    np.testing.assert_array_equal(three, np.arange(24).reshape(2, 3, 4) - 5)


def test_npy_is_recognised_by_content(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 3)))
    shutil.move(tmp_path / "a.npy", tmp_path / "a.png")
    assert decode(tmp_path / "a.png")[1].mode == "npy"


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.array([[None, 1]], dtype=object), r"cannot load \.npy array: ValueError: Object arrays cannot be loaded"),
        (np.zeros((1, 2, 3, 4)), r"shape \(1, 2, 3, 4\); expected \(H, W\) or \(C, H, W\)"),
        (np.zeros(5), r"shape \(5,\)"),
        (np.zeros((2, 2), np.complex64), r"dtype complex64"),
        (np.zeros((0, 4)), r"empty"),
    ],
)
def test_unusable_npy_is_refused(tmp_path, array, reason):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    with pytest.raises(ImageError, match=reason):
        decode(tmp_path / "bad.npy")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((50, 50)))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"^cannot load \.npy array"):
        decode(tmp_path / "a.npy")


def test_npy_max_pixels(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 10, 20), np.float32))
    with pytest.raises(ImageError, match="20x10 = 200 pixels, more than the limit of 199"):
        decode(tmp_path / "a.npy", max_pixels=199)


# --- content, not extension; errors ----------------------------------------------------------


def test_png_named_jpg_loads(tmp_path, photo_rgb):
    shutil.copyfile(PHOTO, tmp_path / "really_a_png.jpg")
    array, info = decode(tmp_path / "really_a_png.jpg")
    assert info.mode == "RGB"
    np.testing.assert_array_equal(array, photo_rgb)


def test_truncated_jpeg_raises(tmp_path):
    data = (SAMPLE_IMAGES / "astronaut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"^cannot decode image: OSError: image file is truncated"):
        decode(tmp_path / "cut.jpg")


def test_other_pillow_formats_are_refused(tmp_path):
    save(photo().resize((32, 32)), tmp_path / "icon.ico")
    with pytest.raises(ImageError, match="cannot identify image file"):
        decode(tmp_path / "icon.ico")


@ignore_bomb_warning
def test_max_pixels_is_checked_from_the_header_before_decoding(tmp_path):
    # A header that claims 144 megapixels with no pixel data: decoding it would fail as
    # truncated, so the size message proves the pixels were never touched.
    path = tmp_path / "header_only.png"
    path.write_bytes(black_png(HUGE_SIZE, HUGE_SIZE, pixels=False))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"^image too large: 12000x12000 = 144000000 pixels"):
        decode(path)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ImageError, match=r"^cannot decode image"):
        decode(path, max_pixels=None)


def test_max_pixels_boundary(files):
    assert decode(files["photo.bmp"], max_pixels=451 * 300)[0].shape == (3, 300, 451)
    with pytest.raises(ImageError, match="451x300 = 135300 pixels, more than the limit of 135299"):
        decode(files["photo.bmp"], max_pixels=451 * 300 - 1)
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def test_pillows_own_limit_becomes_an_image_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(black_png(20_000, 10_000, pixels=False))  # over twice Pillow's limit
    reason = r"^cannot decode image: DecompressionBombError: Image size \(200000000 pixels\)"
    with pytest.raises(ImageError, match=reason):
        decode(path, max_pixels=None)


@pytest.mark.parametrize("name, reason", [(".", "Is a directory"), ("gone.png", "No such file or directory")])
def test_unreadable_paths(tmp_path, name, reason):
    with pytest.raises(ImageError, match=f"^cannot read file: {reason}$"):
        decode(tmp_path / name)


def test_corrupt_png_data(tmp_path):
    data = bytearray(PHOTO.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed inside the pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"^cannot decode image: "):
        decode(tmp_path / "corrupt.png")


@pytest.mark.parametrize("name", ["exif_rotated.jpg", "gray16.png", "cmyk.jpg", "array.npy", "rgba.png"])
@pytest.mark.parametrize("config", [InputConfig(), InputConfig(color="gray", resize={"shortest": 50})])
def test_probe_shape_is_the_decoded_shape(files, name, config):
    assert probe_shape(files[name], config) == decode(files[name], config)[0].shape


@pytest.mark.parametrize("name", ["empty.png", "not_an_image.jpg", "notes.txt"])
def test_probe_shape_refuses_what_decode_refuses(files, name):
    with pytest.raises(ImageError):
        probe_shape(files[name])


@ignore_bomb_warning
def test_probe_shape_reads_only_the_header(tmp_path):
    path = tmp_path / "header_only.png"
    path.write_bytes(black_png(HUGE_SIZE, HUGE_SIZE, pixels=False))
    assert probe_shape(path, GRAY) == (1, HUGE_SIZE, HUGE_SIZE)


def test_decoding_in_threads_gives_the_same_arrays(files):
    names = ["photo.tiff", "photo.webp", "cmyk.jpg", "gray16.png", "rgba.png", "exif_rotated.jpg", "array.npy"] * 3
    config = InputConfig(resize={"longest": 64})
    serial = [load_image(files[name], config) for name in names]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda name: load_image(files[name], config), names))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_public_load_image():
    import poolcli

    np.testing.assert_array_equal(poolcli.load_image(PHOTO, GRAY), load_image(PHOTO, GRAY))


def test_the_file_is_read_once(files, monkeypatch):
    """Hashing and decoding share the same bytes: Pillow gets them in memory."""
    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    monkeypatch.setattr(Image, "open", _only_bytes_io(Image.open))
    decode(files["photo.tiff"])
    assert reads == [files["photo.tiff"]]


def _only_bytes_io(open_image):
    def checked(fp, *args, **kwargs):
        assert isinstance(fp, io.BytesIO)
        return open_image(fp, *args, **kwargs)

    return checked
