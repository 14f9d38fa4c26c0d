"""``tinydigits predict``: batches of files in, one line (or JSON object) per file out;
bad files are reported on stderr and never stop the batch."""

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from web_helpers import huge_png, on_paper, truncated_jpeg

import tinydigits
from tinydigits.cli import main
from tinydigits.predict import expand_paths


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, mnist):
    """Three good pictures (an MNIST PNG, a photo-like JPEG, a BMP) in one directory."""
    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(mnist.test_images[0].numpy()).save(folder / "a_mnist.png")
    on_paper(mnist.test_images[1]).convert("RGB").save(folder / "b_paper.jpg", quality=85)
    on_paper(mnist.test_images[2], size=120).save(folder / "c_scan.bmp")
    (folder / "notes.txt").write_text("not a picture, and not picked up from the directory")
    labels = {name: int(mnist.test_labels[i]) for i, name in enumerate(["a_mnist.png", "b_paper.jpg",
                                                                        "c_scan.bmp"])}
    return folder, labels


def bad_files(folder) -> dict:
    files = {
        "empty.png": (b"", "empty file"),
        "text.jpg": (b"just some text\n", "not an image"),
        "truncated.jpg": (truncated_jpeg(), "truncated"),
        "bomb.png": (huge_png(20000, 20000), "too large"),
    }
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), (240, 235, 220)).save(blank, format="PNG")
    files["blank.png"] = (blank.getvalue(), "no ink")
    out = {}
    for name, (data, message) in files.items():
        (folder / name).write_bytes(data)
        out[str(folder / name)] = message
    out[str(folder / "missing.png")] = "no such file"
    return out


def invoke(*args: str):
    return CliRunner().invoke(main, ["predict", *args])


@pytest.mark.kernels
def test_good_files_and_directories_are_classified(pictures):
    folder, labels = pictures
    result = invoke(str(folder))
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / name) for name in sorted(labels)]
    for line, name in zip(lines, sorted(labels), strict=True):
        assert line.split(": ")[1].startswith(f"{labels[name]} (")
        assert "top-3:" in line and line.count("%") == 4
    assert result.stderr == ""


@pytest.mark.kernels
def test_bad_files_never_stop_the_batch(pictures, tmp_path):
    folder, labels = pictures
    bad = bad_files(tmp_path)
    args = [str(folder / "a_mnist.png"), *bad, str(folder / "c_scan.bmp")]
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output + result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad)
    for line, (file, message) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"Error: {file}: ") and message in line
    good = result.stdout.splitlines()
    assert len(good) == 2 and good[0].startswith(str(folder / "a_mnist.png"))
    assert good[1].startswith(f"{folder / 'c_scan.bmp'}: {labels['c_scan.bmp']} (")


@pytest.mark.kernels
def test_json_lines_with_top_k(pictures, tmp_path):
    folder, labels = pictures
    bad = bad_files(tmp_path)
    result = invoke("--json", "--top-k", "5", str(folder), next(iter(bad)))
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4
    for record, name in zip(records[:3], sorted(labels), strict=True):
        assert record["file"] == str(folder / name) and record["digit"] == labels[name]
        assert len(record["top_k"]) == 5 and record["top_k"][0] == [record["digit"], record["probability"]]
        probs = [p for _, p in record["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0.5 < probs[0] <= 1
    assert records[-1] == {"file": next(iter(bad)), "error": "empty file"}
    assert "empty file" in result.stderr


def test_top_k_bounds_are_usage_errors(pictures):
    folder, _ = pictures
    for k in ("0", "11"):
        result = invoke("--top-k", k, str(folder))
        assert result.exit_code == 2 and "Invalid value for '--top-k'" in result.output + result.stderr
    assert invoke().exit_code == 2


@pytest.mark.kernels
def test_save_preprocessed_writes_the_28x28_inputs(pictures, tmp_path, mnist):
    folder, _ = pictures
    out = tmp_path / "seen"
    result = invoke("--json", "--save-preprocessed", str(out), str(folder), str(folder / "a_mnist.png"))
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["a_mnist.png-2.png", "a_mnist.png.png", "b_paper.jpg.png", "c_scan.bmp.png"]
    assert [r["preprocessed"] for r in records] == [str(out / n) for n in
                                                     ["a_mnist.png.png", "b_paper.jpg.png", "c_scan.bmp.png",
                                                      "a_mnist.png-2.png"]]
    first = Image.open(out / "a_mnist.png.png")
    assert first.size == (28, 28) and first.mode == "L"
    # The MNIST digit went through essentially unchanged.
    diff = np.abs(np.asarray(first, dtype=float) - mnist.test_images[0].numpy())
    assert diff.mean() < 5


@pytest.mark.kernels
def test_weights_option_and_bad_weights(pictures, tmp_path):
    folder, labels = pictures
    weights = tinydigits.save_weights(tinydigits.load_model("medium", pretrained=True),
                                      tmp_path / "m.safetensors", {})
    result = invoke("--weights", str(weights), str(folder / "b_paper.jpg"))
    assert result.exit_code == 0 and result.stdout.split(": ")[1].startswith(f"{labels['b_paper.jpg']} (")
    wrong = tinydigits.save_weights(tinydigits.build_model("small"), tmp_path / "s.safetensors", {})
    result = invoke("--weights", str(wrong), str(folder))
    assert result.exit_code == 1 and "not medium weights" in result.output + result.stderr


def test_directory_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    assert next(iter(expand_paths([tmp_path])))[1].startswith("directory holds no image files")
    result = invoke(str(tmp_path))
    assert result.exit_code == 1 and f"Error: {tmp_path}: directory holds no image files" in result.stderr


@pytest.mark.kernels
@pytest.mark.parametrize("size", [(3000, 1), (2000, 2), (1, 900)])
def test_thin_pictures_do_not_stop_the_batch(pictures, tmp_path, size):
    """A one- or two-pixel-thin picture gets a result or its own error; later files still run."""
    folder, labels = pictures
    thin = np.full((size[1], size[0]), 235, dtype=np.uint8)
    thin.flat[len(thin.flat) // 3 : len(thin.flat) // 2] = 20  # a dark stroke
    path = tmp_path / "a_thin.png"
    Image.fromarray(thin).save(path)
    result = invoke(str(path), str(folder / "b_paper.jpg"))
    assert "Traceback" not in result.output + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith(f"{folder / 'b_paper.jpg'}: {labels['b_paper.jpg']} (")
