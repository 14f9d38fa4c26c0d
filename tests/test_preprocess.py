"""Preprocessing real pictures into MNIST inputs: accuracy on scan-like pictures, the
MNIST conventions (polarity, 20x20 box, centre of mass), odd image modes, bad input."""

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scan_images import scan_like
from web_helpers import BAD_INPUTS, huge_png, on_paper, png_bytes

import tinydigits
from tinydigits import TinyDigitsError
from tinydigits.predict import classify, predict_files
from tinydigits.preprocess import MAX_PIXELS, PreprocessError, load_image, to_mnist

# Preprocessing is float work (resampling, blur, thresholds) that NumPy and Pillow may run with
# other SIMD kernels on another CPU: scripts/test-kernels.sh runs this module again under others.
pytestmark = pytest.mark.kernels

N_SCANS = 250  # a few hundred pictures; about 0.1 s each to make, save and classify


@pytest.fixture(scope="module")
def model():
    return tinydigits.load_model("medium", pretrained=True)


REFERENCE = Path(__file__).parent / "data" / "to_mnist_reference.npz"


def test_preprocessing_gives_the_stored_inputs_on_any_cpu(mnist):
    """60 scan-like pictures give exactly the 28x28 inputs stored in tests/data. Exact on any
    x86-64 CPU, BLAS kernel and thread count: to_mnist uses no BLAS/LAPACK (float64 elementwise
    operations, NumPy's fixed-order sums, its own 6x6 solver). The file was written when the
    background fit left BLAS; against the outputs before that, 4 pixels of 4 images moved by 1/255."""
    rng = np.random.default_rng(2024)
    stored = np.load(REFERENCE)["images"]
    now = np.stack([to_mnist(scan_like(mnist.test_images[i].numpy(), rng).data).numpy() for i in range(60)])
    assert np.array_equal(now, stored)


def test_big_jpegs_are_decoded_at_reduced_scale_with_the_same_digits(mnist, model):
    """A phone-sized JPEG decodes in JPEG's draft mode (1/4 scale here); the 28x28 input is
    close to that of a full decode and reads as the same digit (right or wrong)."""
    rng = np.random.default_rng(11)
    differences = []
    for i in range(12):
        scan = scan_like(mnist.test_images[i].numpy(), rng, "PNG")
        picture = Image.open(io.BytesIO(scan.data)).convert("RGB")
        scale = 3000 / max(picture.size)
        big = picture.resize((round(picture.width * scale), round(picture.height * scale)))
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=92)
        blob = buffer.getvalue()
        draft = load_image(blob, reduce_to=512)
        assert max(draft.size) < 1600 <= max(load_image(blob).size)  # really decoded smaller
        fast, full = to_mnist(blob), to_mnist(load_image(blob))
        digits = [ranked[0][0] for ranked in classify(model, torch.stack([fast, full]))]
        assert digits[0] == digits[1]
        differences.append(float((fast.float() - full.float()).abs().mean()))
    assert float(np.median(differences)) < 4.0  # of 255


def test_scan_like_pictures_are_classified_at_least_98_percent(mnist, model, tmp_path):
    rng = np.random.default_rng(2024)
    picks = rng.choice(len(mnist.test_labels), N_SCANS, replace=False)
    truth, formats, notes = {}, Counter(), Counter()
    for n, i in enumerate(picks):
        picture = scan_like(mnist.test_images[i].numpy(), rng)
        path = tmp_path / f"{n:03d}{picture.suffix}"
        path.write_bytes(picture.data)
        truth[str(path)] = int(mnist.test_labels[i])
        formats[picture.format] += 1
        notes.update(word.rstrip("+-0123456789") for word in picture.description.split()[1:])
    assert set(formats) == {"PNG", "JPEG", "BMP", "WEBP"} and min(formats.values()) > 40
    assert notes["exif"] > 30 and notes["rot"] > 90 and notes["thin"] > 30

    results = list(predict_files(model, [tmp_path]))
    assert len(results) == N_SCANS and all(r.ok for r in results), [r.error for r in results if not r.ok]
    correct = sum(r.digit == truth[r.file] for r in results)
    print(f"scan-like accuracy: {correct}/{N_SCANS} = {100 * correct / N_SCANS:.2f}%")
    assert correct >= 0.98 * N_SCANS


def test_mnist_digit_passes_through_essentially_unchanged(mnist, model):
    originals = mnist.test_images[:300]
    processed = torch.stack([to_mnist(png_bytes(Image.fromarray(x.numpy()))) for x in originals])
    diff = (processed.float() - originals.float()).abs() / 255
    assert diff.mean() < 0.01
    assert (diff.mean(dim=(1, 2)) < 0.05).float().mean() > 0.97
    before = torch.tensor([k[0][0] for k in classify(model, originals, 1)])
    after = torch.tensor([k[0][0] for k in classify(model, processed, 1)])
    assert (before == after).float().mean() >= 0.99
    assert (after == mnist.test_labels[:300]).float().mean() >= 0.99


def test_polarity_is_detected_both_ways(mnist):
    digit = mnist.test_images[1]
    dark_on_light = np.asarray(to_mnist(on_paper(digit)), dtype=np.float32)
    light_on_dark = np.asarray(to_mnist(Image.eval(on_paper(digit), lambda v: 255 - v)), dtype=np.float32)
    assert np.abs(dark_on_light - light_on_dark).mean() < 3
    assert dark_on_light[0].max() == 0 and dark_on_light.max() == 255  # white digit, black border


def test_digit_fits_20x20_box_keeping_aspect_and_is_centred_by_mass():
    # An L-shaped mark, 200 tall and 100 wide, off-centre: its centre of mass is not
    # its box centre, so centring by mass shifts it away from the box-centred position.
    sheet = np.full((600, 500), 240, dtype=np.uint8)
    sheet[50:250, 300:320] = 20
    sheet[230:250, 300:400] = 20
    out = to_mnist(Image.fromarray(sheet)).numpy().astype(np.float64)
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert rows[-1] - rows[0] + 1 == 20
    assert 9 <= cols[-1] - cols[0] + 1 <= 11  # aspect ratio 2:1 kept
    ys, xs = np.mgrid[0:28, 0:28]
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert (cols[0] + cols[-1]) / 2 > 14.5  # the heavy vertical bar sits left of the box centre


def test_small_specks_are_removed_but_digit_parts_kept():
    sheet = np.full((400, 400), 250, dtype=np.uint8)
    sheet[100:300, 190:210] = 10  # a "1"
    sheet[20:23, 20:23] = 0  # dust far away would otherwise stretch the box
    out = to_mnist(Image.fromarray(sheet)).numpy()
    rows = np.flatnonzero(out.any(axis=1))
    assert rows[-1] - rows[0] + 1 == 20 and out[:, :10].max() == 0


@pytest.mark.parametrize("kind", ["rgba_black", "rgba_white", "alpha_only", "palette_transparent",
                                  "sixteen_bit", "sixteen_bit_light_ink", "palette", "one_bit", "cmyk_jpeg"])
def test_unusual_modes_work(mnist, model, kind):
    digit = mnist.test_images[2]
    label = int(mnist.test_labels[2])
    paper = on_paper(digit)  # L, black on white
    ink = Image.eval(paper, lambda v: 255 - v)  # ink strength
    if kind == "rgba_black":
        image = Image.merge("RGBA", [Image.new("L", paper.size, 0)] * 3 + [ink])
    elif kind == "rgba_white":
        image = Image.merge("RGBA", [Image.new("L", paper.size, 255)] * 3 + [ink])
    elif kind == "alpha_only":
        image = Image.merge("LA", [Image.new("L", paper.size, 0), ink])
    elif kind == "palette_transparent":
        image = paper.convert("P")
        image.info["transparency"] = image.getpixel((0, 0))
    elif kind == "sixteen_bit":
        image = Image.fromarray(np.asarray(paper, dtype=np.uint16) * 257)
    elif kind == "sixteen_bit_light_ink":
        image = Image.fromarray(np.asarray(ink, dtype=np.uint16) * 257)
    elif kind == "palette":
        image = paper.convert("RGB").quantize(16)
    elif kind == "one_bit":
        image = paper.convert("1", dither=Image.Dither.NONE)  # a black-and-white scan
    else:
        image = paper.convert("CMYK")
    fmt = "JPEG" if kind == "cmyk_jpeg" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    loaded = load_image(buffer.getvalue())
    if kind.startswith("sixteen"):
        assert loaded.mode.startswith("I")  # really stored as 16-bit
    out = to_mnist(loaded)
    reference = to_mnist(paper)
    tolerance = 25 if kind == "one_bit" else 12  # 1-bit has lost the antialiasing
    assert np.abs(out.numpy().astype(float) - reference.numpy()).mean() < tolerance, kind
    assert classify(model, out[None], 1)[0][0][0] == label


def test_load_image_takes_paths_bytes_and_file_objects(tmp_path, mnist):
    data = png_bytes(on_paper(mnist.test_images[3]))
    path = tmp_path / "d.png"
    path.write_bytes(data)

    class Pipe(io.RawIOBase):  # not seekable, like stdin or a socket
        def __init__(self):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self.inner.readinto(b)

    images = [load_image(path), load_image(str(path)), load_image(data), load_image(io.BytesIO(data)),
              load_image(Pipe()), load_image(bytearray(data))]
    assert all(im.size == (400, 300) for im in images)
    outs = [to_mnist(s) for s in (path, data)]
    assert torch.equal(outs[0], outs[1])


def test_exif_orientation_is_applied(mnist):
    upright = on_paper(mnist.test_images[4]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", exif=exif, quality=95)
    loaded = load_image(buffer.getvalue())
    assert loaded.size == upright.size
    assert np.abs(np.asarray(to_mnist(loaded), float) - np.asarray(to_mnist(upright), float)).mean() < 6


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_one_line_preprocess_error(name):
    make, message = BAD_INPUTS[name]
    with pytest.raises(PreprocessError) as info:
        to_mnist(make())
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, TinyDigitsError)  # the CLI's friendly_errors catches it


def test_size_limit_is_checked_from_the_header():
    assert MAX_PIXELS < 8000 * 6000
    with pytest.raises(PreprocessError, match="8000x6000"):
        load_image(huge_png(8000, 6000))
    small = png_bytes(Image.new("L", (100, 100), 255))
    with pytest.raises(PreprocessError, match="too large"):
        load_image(small, max_pixels=5000)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PreprocessError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(PreprocessError, match="directory"):
        load_image(tmp_path)
