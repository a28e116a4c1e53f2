"""Phone photos: shrink on load (``input.decode``), checked against Pillow steps done by hand;
AVIF, HEIC through pillow-heif, ICC profiles, 16-bit colour PNGs."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms, features

from fixtures import SAMPLE_IMAGES, _chunk, display_p3_profile, photo
from poolcli.config import InputConfig
from poolcli.errors import ImageError
from poolcli.io.images import REDUCING_GAP, decode

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

ORIENTATION = 0x0112


def phone_like(path, size=(2016, 1512), orientation=1, quality=90, fmt="JPEG"):
    """A photograph blown up to ``size`` (W, H as stored) with a sensor's noise, saved as ``fmt``."""
    rng = np.random.default_rng(7)
    with Image.open(SAMPLE_IMAGES / "astronaut.jpg") as source:
        big = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(big, np.int16) + np.round(rng.standard_normal((size[1], size[0], 3)) * 6).astype(np.int16)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    options = {"quality": quality} if fmt == "JPEG" else {"compress_level": 1}
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif
    image.save(path, fmt, **options)
    return path


def float_planes(image: Image.Image) -> np.ndarray:
    return np.moveaxis(np.asarray(image, np.float32) / 255, 2, 0)


def resized_by_hand(image: Image.Image, size, interpolation="box") -> np.ndarray:
    """Pillow's float resize of each channel, clipped: what a run does after decoding."""
    resample = getattr(Image.Resampling, interpolation.upper())
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize(size[::-1], resample)) for p in float_planes(image)]
    return np.clip(np.stack(planes), 0, 1)


@pytest.fixture(scope="module")
def phone_jpeg(tmp_path_factory):
    return phone_like(tmp_path_factory.mktemp("phone") / "phone.jpg")


@pytest.fixture(scope="module")
def sideways_jpeg(tmp_path_factory):
    return phone_like(tmp_path_factory.mktemp("phone") / "sideways.jpg", orientation=6)


RETRIEVAL = {"resize": {"size": [128, 128]}, "interpolation": "box"}


def test_a_jpeg_is_decoded_at_the_largest_dct_scale_that_leaves_the_target(phone_jpeg):
    array, info = decode(phone_jpeg, InputConfig(**RETRIEVAL))
    with Image.open(phone_jpeg) as image:
        image.draft("RGB", (128, 128))  # 2016 x 1512: 1/8 leaves 252 x 189, at least 128 each way
        assert image.size == (252, 189)
        expected = resized_by_hand(image.convert("RGB"), (128, 128))
    np.testing.assert_array_equal(array, expected)
    assert (info.width, info.height) == (2016, 1512)  # the stored size, not the decoded one


def test_the_dct_scale_leaves_at_least_the_target_in_each_direction(phone_jpeg):
    # longest 600 of 2016 x 1512 is 600 x 450: 1/2 (1008 x 756) leaves it, 1/4 (504 x 378) does not
    config = InputConfig(resize={"longest": 600}, interpolation="bilinear")
    array, _ = decode(phone_jpeg, config)
    with Image.open(phone_jpeg) as image:
        image.draft("RGB", (600, 450))
        assert image.size == (1008, 756)
        expected = resized_by_hand(image.convert("RGB"), (450, 600), "bilinear")
    np.testing.assert_array_equal(array, expected)


def test_a_sideways_jpeg_is_drafted_in_its_stored_orientation(sideways_jpeg):
    config = InputConfig(resize={"size": [200, 100]})  # upright 1512 x 2016 (W x H) -> 100 x 200
    array, info = decode(sideways_jpeg, config)
    assert (info.exif_orientation, info.width, info.height) == (6, 1512, 2016)
    with Image.open(sideways_jpeg) as image:
        image.draft("RGB", (200, 100))  # stored 2016 x 1512: 1/8 gives 252 x 189, at least 200 x 100
        upright = image.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (189, 252)
    np.testing.assert_array_equal(array, resized_by_hand(upright, (200, 100), "bilinear"))


def test_decode_full_decodes_every_pixel(phone_jpeg):
    array, _ = decode(phone_jpeg, InputConfig(**RETRIEVAL, decode="full"))
    with Image.open(phone_jpeg) as image:
        expected = resized_by_hand(image.convert("RGB"), (128, 128))
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize("interpolation, mean, largest", [("bilinear", 1, 16), ("lanczos", 1, 16), ("box", 4, 80)])
def test_shrunk_and_full_decodes_are_close(phone_jpeg, interpolation, mean, largest):
    """Within a few levels of 255 on average. Pillow's box filter averages the pixels whose
    centres fall in each output pixel, unweighted: from 252 x 189 to 128 x 128 that is one or
    two pixels each way, so it lands further from the full decode's box than the others."""
    config = {"resize": {"size": [128, 128]}, "interpolation": interpolation}
    reduced, _ = decode(phone_jpeg, InputConfig(**config))
    full, _ = decode(phone_jpeg, InputConfig(**config, decode="full"))
    difference = np.abs(reduced - full)
    assert difference.mean() < mean / 255 and difference.max() < largest / 255
    assert abs((reduced - full).mean()) < 0.2 / 255  # no shift of brightness or colour
    assert not np.array_equal(reduced, full)  # they are different decodes


def test_other_formats_are_reduced_by_whole_blocks(tmp_path):
    path = phone_like(tmp_path / "big.png", size=(1100, 1030), fmt="PNG")
    array, info = decode(path, InputConfig(resize={"size": [128, 128]}))
    # 1100 // (4 x 128) = 2 across, 1030 // 512 = 2 down: reduce((2, 2)), then the resize
    assert REDUCING_GAP == 4 and (info.width, info.height) == (1100, 1030)
    with Image.open(path) as image:
        reduced = image.convert("RGB").reduce((2, 2))
    np.testing.assert_array_equal(array, resized_by_hand(reduced, (128, 128), "bilinear"))
    full, _ = decode(path, InputConfig(resize={"size": [128, 128]}, decode="full"))
    assert np.abs(array - full).max() < 3 / 255


@pytest.mark.parametrize("resize", [None, {"longest": 3000}, {"longest": 1500}])
def test_nothing_is_shrunk_without_a_shrinking_resize(phone_jpeg, resize):
    config = {"resize": resize} if resize else {}
    reduced, _ = decode(phone_jpeg, InputConfig(**config))
    full, _ = decode(phone_jpeg, InputConfig(**config, decode="full"))
    np.testing.assert_array_equal(reduced, full)  # 1500 of 2016: no DCT scale leaves it


def test_a_shrunk_photo_never_has_a_full_size_float_copy(tmp_path):
    path = phone_like(tmp_path / "phone.jpg", size=(4032, 3024))
    config = {"resize": {"size": [128, 128]}, "interpolation": "box"}

    def peak_bytes(decode_mode):
        tracemalloc.start()  # numpy's arrays are traced; Pillow's own buffers are not
        try:
            decode(path, InputConfig(**config, decode=decode_mode))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    full_size_float = 3 * 4032 * 3024 * 4
    assert peak_bytes("full") > full_size_float  # what the check would see
    assert peak_bytes("reduced") < full_size_float / 10  # the file's bytes, and the small image


def test_decode_is_a_config_option_with_a_clear_error():
    from poolcli.config import load_config
    from poolcli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"input\.decode"):
        load_config({"input": {"decode": "half"}, "stages": [{"type": "global_avg_pool"}]})


def test_the_fixture_photo_keeps_its_exact_pixels_under_decode_full(tmp_path):
    path = tmp_path / "chelsea.png"
    photo().save(path)
    reduced, _ = decode(path, InputConfig(resize={"size": [32, 48]}))  # 300 // 128 = 2, 451 // 192 = 2
    full, _ = decode(path, InputConfig(resize={"size": [32, 48]}, decode="full"))
    np.testing.assert_array_equal(full, resized_by_hand(photo(), (32, 48), "bilinear"))
    assert np.abs(reduced - full).max() < 8 / 255 and np.abs(reduced - full).mean() < 1 / 255


# --- formats ---------------------------------------------------------------------------------

requires_avif = pytest.mark.skipif(not features.check("avif"), reason="Pillow built without libavif")


def exact(image: Image.Image) -> np.ndarray:
    return float_planes(image.convert("RGB"))


@requires_avif
def test_avif_loads_by_its_content(tmp_path):
    photo().save(tmp_path / "photo.avif", quality=95)
    (tmp_path / "photo.avif").rename(tmp_path / "named.jpg")  # decoded by content, as every format
    array, info = decode(tmp_path / "named.jpg")
    assert (info.width, info.height, info.mode) == (451, 300, "RGB")
    assert np.abs(array - exact(photo())).mean() < 3 / 255


def test_heic_loads_through_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(photo()).save(tmp_path / "photo.heic", quality=95)
    array, info = decode(tmp_path / "photo.heic")
    assert (info.width, info.height, info.exif_orientation) == (451, 300, 1)
    assert np.abs(array - exact(photo())).mean() < 3 / 255


def test_a_sideways_heic_is_shown_upright_once(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored = photo().transpose(Image.Transpose.ROTATE_90)
    pillow_heif.from_pillow(stored).save(tmp_path / "sideways.heic", quality=95, exif=exif.tobytes())
    array, info = decode(tmp_path / "sideways.heic", InputConfig(resize={"longest": 200}))
    assert (info.width, info.height, info.exif_orientation) == (451, 300, 6)
    assert array.shape == (3, 133, 200)
    assert np.abs(array - resized_by_hand(photo(), (133, 200), "bilinear")).mean() < 3 / 255


def test_pillow_heif_is_registered_on_the_first_heif_file_only(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(photo()).save(tmp_path / "photo.heic", quality=80)
    photo().save(tmp_path / "photo.png")
    script = (
        "import sys\n"
        "from PIL import Image\n"
        "from poolcli.io.images import decode\n"
        f"decode({str(tmp_path / 'photo.png')!r})\n"
        "before = ('pillow_heif' in sys.modules, 'HEIF' in Image.OPEN)\n"
        f"decode({str(tmp_path / 'photo.heic')!r})\n"
        "print(before, ('pillow_heif' in sys.modules, 'HEIF' in Image.OPEN))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "(False, False) (True, True)", done.stderr


def test_a_heic_without_the_plugin_is_a_failure_row(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    folder = tmp_path / "in"
    folder.mkdir()
    pillow_heif.from_pillow(photo()).save(folder / "phone.heic", quality=80)
    photo().save(folder / "photo.png")
    script = (  # this process cannot import pillow_heif, as where it is not installed
        "import sys\n"
        "sys.modules['pillow_heif'] = None\n"
        "sys.argv = ['poolcli', 'run', sys.argv[1], sys.argv[2], '-o', sys.argv[3], '--no-progress']\n"
        "from poolcli.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(CONFIGS / "retrieval.yaml"), str(folder),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    failures = pq.read_table(tmp_path / "out" / "failures" / "part-00000.parquet").to_pylist()
    assert [(Path(f["path"]).name, f["stage"]) for f in failures] == [("phone.heic", "load")]
    assert failures[0]["error"] == "HEIC/HEIF image: reading it needs the pillow-heif plugin (pip install 'poolcli[heif]')"
    assert pq.read_table(tmp_path / "out" / "metadata" / "part-00000.parquet").column("path").to_pylist() == [
        str(folder / "photo.png")]


def p3_twin(image: Image.Image) -> Image.Image:
    """``image`` (sRGB) converted to Display P3 by ImageCms, as a phone stores the same colours."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    return ImageCms.profileToProfile(image, srgb, p3, outputMode="RGB")


@pytest.mark.parametrize("fmt, suffix, mean", [("PNG", "png", 0.6), ("JPEG", "jpg", 1.5)])  # JPEG: two lossy encodes
def test_a_display_p3_photo_and_its_srgb_twin_give_close_arrays_and_descriptors(tmp_path, fmt, suffix, mean):
    from poolcli.pipeline import Pipeline

    quality = {"quality": 95} if fmt == "JPEG" else {}
    photo().save(tmp_path / f"srgb.{suffix}", fmt, **quality)
    p3_pixels = p3_twin(photo())
    p3_pixels.save(tmp_path / f"p3.{suffix}", fmt, icc_profile=display_p3_profile(), **quality)
    srgb, _ = decode(tmp_path / f"srgb.{suffix}")
    p3, _ = decode(tmp_path / f"p3.{suffix}")
    unconverted, _ = decode(tmp_path / f"p3.{suffix}", InputConfig(decode="full"))
    assert np.abs(p3 - srgb).mean() < mean / 255
    assert np.abs(unconverted - srgb).mean() > 2.5 / 255  # what the conversion undoes
    with Image.open(tmp_path / f"p3.{suffix}") as stored:
        np.testing.assert_array_equal(unconverted, exact(stored))  # full: the pixels as stored

    pipeline = Pipeline.from_yaml(CONFIGS / "retrieval.yaml")
    config = pipeline.config.input
    ours, twin = (pipeline(decode(tmp_path / name, config)[0]) for name in (f"srgb.{suffix}", f"p3.{suffix}"))
    plain = pipeline(decode(tmp_path / f"p3.{suffix}", config.model_copy(update={"decode": "full"}))[0])
    assert float(ours @ twin) > 1 - 1e-4 and float(ours @ twin) > float(ours @ plain)


def test_an_srgb_profile_changes_almost_nothing(tmp_path):
    srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo().save(tmp_path / "tagged.png", icc_profile=srgb_profile)
    array, _ = decode(tmp_path / "tagged.png")
    assert np.abs(array - exact(photo())).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("image, profile, reason", [
    (photo(), b"not an ICC profile at all", r"^cannot apply the image's ICC colour profile: OSError: cannot open profile"),
    (photo().convert("L"), display_p3_profile(), r"^cannot apply the image's ICC colour profile: PyCMSError: cannot build transform$"),
])
def test_a_broken_or_mismatched_profile_is_an_image_error(tmp_path, image, profile, reason):
    image.save(tmp_path / "broken.png", icc_profile=profile)
    with pytest.raises(ImageError, match=reason):
        decode(tmp_path / "broken.png")
    decode(tmp_path / "broken.png", InputConfig(decode="full"))  # its pixels are fine: full ignores profiles


def test_profiles_convert_the_same_on_many_threads(tmp_path):
    paths = []
    for index in range(6):
        path = tmp_path / f"p3_{index}.jpg"
        p3_twin(photo().rotate(index * 30)).save(path, quality=90, icc_profile=display_p3_profile())
        paths.append(path)
    config = InputConfig(resize={"longest": 200})
    serial = [decode(path, config)[0] for path in paths * 3]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda path: decode(path, config)[0], paths * 3))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_16_bit_rgb_png_is_read_at_8_bits_as_pillow_reads_it(tmp_path):
    """The documented limit: Pillow has no 16-bit colour mode, and keeps each sample's high
    byte (16-bit gray PNGs keep all 16 bits: see test_images.py)."""
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 16, 2, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    array, info = decode(path)
    assert info.mode == "RGB"
    np.testing.assert_array_equal(array, np.moveaxis((samples >> 8).astype(np.float32) / 255, 2, 0))
