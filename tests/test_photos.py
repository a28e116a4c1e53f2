"""Phone photos: shrink on load (``input.decode``), checked against Pillow steps done by hand."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from fixtures import SAMPLE_IMAGES, photo
from poolcli.config import InputConfig
from poolcli.io.images import REDUCING_GAP, decode

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
