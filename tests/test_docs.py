"""What a new user reads first: the README's code (it runs as written), its map of the code
(every module and folder is on it), its Quick start, the commands' help, and what printing
a reading shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import tinydigits
from tinydigits import data
from tinydigits.cli import main
from tinydigits.lab.numbers import number_pictures
from tinydigits.read import read_number

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
PACKAGE = Path(tinydigits.__file__).parent


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks tagged ``language`` ("": untagged), fence by fence."""
    blocks, lines, tag = [], None, ""
    for line in README.splitlines(keepends=True):
        if not line.startswith("```"):
            if lines is not None:
                lines.append(line)
        elif lines is None:
            lines, tag = [], line[3:].strip()
        else:
            if tag == language:
                blocks.append("".join(lines))
            lines = None
    return blocks


def test_the_readmes_python_imports_work():
    imports = [line.split("#")[0].strip() for block in _blocks("python") for line in block.splitlines()
               if re.match(r"(from|import) tinydigits\b", line)]
    assert any("open_engine" in line for line in imports)  # where it is: tinydigits.deploy.engines
    for line in imports:
        exec(line, {})  # an ImportError names the line


def test_the_readmes_map_of_the_code_names_every_module_and_folder():
    [tree] = [block for block in _blocks("") if block.startswith("src/tinydigits/\n")]
    names = set(re.findall(r"[\w.-]+/?", tree))
    expected = set()
    for folder in (PACKAGE, PACKAGE / "deploy", PACKAGE / "lab"):
        for path in folder.iterdir():
            if path.name.startswith(("__", ".")) or path.suffix == ".pyc":
                continue
            expected.add(f"{path.name}/" if path.is_dir() else path.name)
    expected |= {path.name for path in (PACKAGE / "deploy" / "web").iterdir()}  # the page's files
    assert sorted(expected - names) == []


def test_the_quick_start_names_the_debian_packages_setup_installs():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    packages = re.findall(r"^need_program \S+ (\S+) ", setup, flags=re.MULTILINE)
    assert len(packages) >= 7
    for package in packages:
        assert f"`{package}`" in quick_start, package
    assert "root" in quick_start and "apt-get" in quick_start


def test_train_help_describes_every_recipe_and_the_subset():
    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "[default|full|reference]" in text
    assert "full: the same on all 60,000 training images" in text and "reference: the original" in text
    assert "--subset INTEGER RANGE" in text


def test_a_reading_prints_its_number_digits_and_boxes_not_tensors(mnist: data.MNIST):
    picture = number_pictures(mnist, 1, seed=7)[0]
    reading = read_number(picture.data, tinydigits.load_model("medium", pretrained=True))
    text = str(reading)
    assert text == repr(reading) and text.startswith(f"Reading(number={picture.number!r}, digits=[Digit(")
    first = reading.digits[0]
    assert (f"Digit({first.digit}, probability={first.probability:.4f}, box=(x={first.x}, y={first.y}, "
            f"width={first.width}, height={first.height}))") in text
    assert "tensor" not in text and len(text) < 120 * len(reading.digits)


@pytest.mark.parametrize("command", ["eval", "predict", "serve"])
def test_backend_help_keeps_int8_files_off_openvino(command):
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
    assert "openvino (fp32 ONNX files)" in text and "fp32 or int8) or openvino" in text
