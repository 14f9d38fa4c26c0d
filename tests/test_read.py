"""Reading whole numbers: generated pictures of numbers made of MNIST test digits, the
`read` command, `predict`'s warning, `POST /api/read`, and bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tinydigits
from tinydigits import data
from tinydigits.cli import main
from tinydigits.lab.numbers import number_pictures, score
from tinydigits.models import DEFAULT_READER
from tinydigits.preprocess import PreprocessError
from tinydigits.read import read_number
from tinydigits.segment import MAX_DIGITS
from tinydigits.strips import encode, number_picture
from tinydigits.weights import get_weights

# Reading hangs on float answers (ink thresholds, the models' close calls): scripts/test-kernels.sh
# runs this module again under other CPU kernels.
pytestmark = pytest.mark.kernels

N_NUMBERS = 100  # per set; the README's figures come from `tinydigits read-eval` (1,000 per set)


@pytest.fixture(scope="module")
def model():
    return tinydigits.load_model("medium", pretrained=True)


def test_the_segmenter_reads_numbers_of_separate_digits(mnist: data.MNIST, model):
    result = score(number_pictures(mnist, N_NUMBERS, seed=1000), model, "segment")
    print(f"separate: {result}")
    # Floors against regressions (docs/READING.md has the figures on the frozen sets).
    assert result["exact"] >= 0.90 * N_NUMBERS, result["failures"]
    assert result["right_count"] >= 0.95 * N_NUMBERS, result["failures"]


def test_the_segmenter_reads_some_touching_numbers(mnist: data.MNIST, model):
    result = score(number_pictures(mnist, N_NUMBERS, seed=2000, touching=True), model, "segment")
    print(f"touching: {result}")
    # A floor against regressions: cutting touching ink is what the sequence reader is for.
    assert result["exact"] >= 0.15 * N_NUMBERS, result["failures"]


def test_boxes_are_in_the_pictures_own_pixels_left_to_right(mnist: data.MNIST, model):
    picture = number_pictures(mnist, 1, seed=7)[0]
    image = Image.open(io.BytesIO(picture.data))
    reading = read_number(picture.data, model, "segment")
    assert reading.number == picture.number and len(reading.digits) == len(picture.number)
    lefts = [d.x for d in reading.digits]
    assert lefts == sorted(lefts)
    for digit in reading.digits:
        assert digit.x >= 0 and digit.x + digit.width <= image.width
        assert digit.y >= 0 and digit.y + digit.height <= image.height
        assert digit.height > 20 and 0 < digit.probability <= 1 and digit.image.shape == (28, 28)
    assert json.loads(json.dumps(reading.to_dict()))["digits"][0]["box"]["width"] == reading.digits[0].width
    # In the picture's own pixels, not the reduced working copy's: the number spans most of it.
    last = reading.digits[-1]
    assert image.width > 512 and last.x + last.width > 0.6 * image.width


def test_a_line_under_or_a_frame_around_the_number_is_not_a_digit(mnist: data.MNIST, model):
    from PIL import ImageDraw

    for picture in number_pictures(mnist, 3, seed=31):
        image = Image.open(io.BytesIO(picture.data)).convert("RGB")
        width, height = image.size
        underlined, framed = image.copy(), image.copy()
        ImageDraw.Draw(underlined).line([(10, int(0.85 * height)), (width - 10, int(0.85 * height))],
                                        fill=(30, 30, 30), width=max(2, height // 40))
        ImageDraw.Draw(framed).rectangle([5, 5, width - 6, height - 6], outline=(30, 30, 30),
                                         width=max(2, height // 40))
        assert read_number(underlined, model).number == read_number(framed, model).number == picture.number


def test_one_digit_blank_pages_and_too_many_digits(mnist: data.MNIST, model):
    rng = np.random.default_rng(3)
    one = number_picture([mnist.test_images[0].numpy()], rng)[0]
    assert read_number(encode(one, rng)[0], model).number == str(int(mnist.test_labels[0]))
    blank = io.BytesIO()
    Image.new("RGB", (400, 200), (240, 238, 230)).save(blank, "PNG")
    with pytest.raises(PreprocessError, match="no ink"):
        read_number(blank.getvalue(), model)
    many = number_picture([mnist.test_images[i].numpy() for i in range(40)], rng)[0]
    with pytest.raises(PreprocessError, match=f"up to {MAX_DIGITS}"):
        read_number(many, model)


def test_read_command_json_boxes_and_a_bad_file(mnist: data.MNIST, tmp_path):
    pictures = number_pictures(mnist, 2, seed=11)
    for index, picture in enumerate(pictures):
        (tmp_path / f"n{index}.{picture.format.lower()}").write_bytes(picture.data)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    boxes = tmp_path / "boxes"
    result = CliRunner().invoke(main, ["read", str(tmp_path), "--method", "segment", "--json",
                                       "--save-boxes", str(boxes)])
    assert result.exit_code == 1  # one bad file
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("number") for line in lines if "number" in line] == [p.number for p in pictures]
    assert [line["file"].rsplit("/", 1)[1] for line in lines if "error" in line] == ["broken.png"]
    first = next(line for line in lines if "number" in line)
    assert set(first["digits"][0]) == {"box", "digit", "probability"}
    assert set(first["digits"][0]["box"]) == {"x", "y", "width", "height"}
    assert "Error: " in result.stderr and "broken.png" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    saved = sorted(p.name for p in boxes.iterdir())
    assert saved == sorted(f"n{i}.{p.format.lower()}.png" for i, p in enumerate(pictures))


def test_predict_warns_when_a_picture_holds_several_digits(mnist: data.MNIST, tmp_path):
    picture = number_pictures(mnist, 1, seed=12)[0]
    path = tmp_path / f"number.{picture.format.lower()}"
    path.write_bytes(picture.data)
    result = CliRunner().invoke(main, ["predict", str(path), "--json"])
    assert result.exit_code == 0
    answer = json.loads(result.stdout)
    assert answer["separate_digits"] == len(picture.number) and "tinydigits read" in answer["warning"]
    assert "Warning: " in result.stderr and "tinydigits read" in result.stderr
    single = tmp_path / "one.png"
    Image.fromarray(255 - mnist.test_images[0].numpy()).resize((112, 112)).save(single)
    quiet = CliRunner().invoke(main, ["predict", str(single), "--json"])
    assert "warning" not in json.loads(quiet.stdout) and quiet.stderr == ""


def test_api_read_answers_the_number_with_boxes(mnist: data.MNIST):
    pytest.importorskip("flask")
    from tinydigits.deploy.serve import create_app

    client = create_app({"medium": tinydigits.load_model("medium", pretrained=True)}).test_client()
    picture = number_pictures(mnist, 1, seed=13)[0]
    answer = client.post("/api/read", data={"image": (io.BytesIO(picture.data), "n.png")})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["number"] == picture.number and body["model"] == "medium"
    assert len(body["digits"]) == len(picture.number) and body["milliseconds"] > 0
    blank = io.BytesIO()
    Image.new("L", (300, 100), 235).save(blank, "PNG")
    refused = client.post("/api/read", data={"image": (io.BytesIO(blank.getvalue()), "b.png")})
    assert refused.status_code == 422 and "no ink" in refused.get_json()["error"]
    broken = client.post("/api/read", data={"image": (io.BytesIO(b"GIF89a nonsense"), "x.gif")})
    assert broken.status_code == 400 and list(broken.get_json()) == ["error"]


def test_readme_and_docs_show_the_committed_reading_figures():
    from pathlib import Path

    from tinydigits.lab.numbers import README_BLOCK, readme_table, render_markdown

    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "docs" / "reading.json").read_text())
    assert README_BLOCK.read((root / "README.md").read_text()) == readme_table(report), (
        "README's reading table is stale: run `tinydigits read-eval --update-readme README.md`")
    assert (root / "docs" / "READING.md").read_text() == render_markdown(report, "docs/READING.md")
    # Measured with the default reader's and Medium's files as shipped now, not weights since replaced.
    assert report["options"]["reader"] == DEFAULT_READER
    shipped = {name: get_weights(name).sha256 for name in (DEFAULT_READER, report["options"]["model"])}
    assert report.get("weights_sha256") == shipped, (
        "docs/READING.md measured other weights than those shipped: run `tinydigits read-eval "
        "--save-boxes docs/reading --update-readme README.md`")


def test_the_pages_reading_constants_are_pythons():
    # read.js ports read.py, strips.py and sequence.py: a constant changed on one side only
    # would read numbers differently in the browser.
    import re
    from pathlib import Path

    from tinydigits import read, strips

    script = (Path(tinydigits.__file__).parent / "deploy" / "web" / "read.js").read_text()
    constants = {name: float(value) for name, value in re.findall(r"const ([A-Z_]+) = ([\d.]+);", script)}
    python = {"DIGIT_WEIGHT": read.DIGIT_WEIGHT, "WIDE": read.WIDE, "CUTS": read.CUTS,
              "MAX_DIGITS": MAX_DIGITS, "STRIP_HEIGHT": strips.STRIP_HEIGHT, "INK_HEIGHT": strips.INK_HEIGHT,
              "PAD": strips.PAD}
    assert {name: constants.get(name) for name in python} == python
