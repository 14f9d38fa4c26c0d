"""The demo as a static site (`tinydigits export --format web`), in Debian's Chromium.

The site is exported with the real command (ONNX Runtime Web really fetched with `npm pack`),
served by Python's plain static file server on 127.0.0.1, and read by the browser alone: no
request may go to an /api path or leave the origin. The JavaScript preprocessing is compared
with Python's on 50 drawn digits. Set TINYDIGITS_SCREENSHOT=1 to also refresh
docs/static-site.png and docs/static-site.json (size, first-load time, parity figures),
which the README quotes.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import io
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from web_helpers import CHROMIUM, DIGITS, STATIC_SCREENSHOT, Page, Stroke, shipped_models

from tinydigits import data
from tinydigits.cli import main
from tinydigits.deploy.static_site import MANIFEST, ORT_WEB_FILES, fetch_runtime, runtime_dir
from tinydigits.io import file_sha256
from tinydigits.markdown import GeneratedBlock
from tinydigits.preprocess import load_image, to_mnist

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytest.importorskip("playwright.sync_api")
FIGURES = STATIC_SCREENSHOT.with_suffix(".json")
README = Path(__file__).resolve().parents[1] / "README.md"
README_BLOCK = GeneratedBlock("static-site", "TINYDIGITS_SCREENSHOT=1 pytest tests/test_static_site.py")


def summary(figures: dict) -> str:
    """The README's sentences about the site, from docs/static-site.json."""
    f = figures
    size = f"{f['site_bytes'] / 1e6:.1f} MB ({f['site_gzip_bytes'] / 1e6:.1f} MB gzipped, as hosts serve it)"
    runtime = f"{f['runtime_bytes'] / f['site_bytes']:.0%}"
    return (f"{size}, {runtime} of it ONNX Runtime Web. From navigation to all three models ready took "
            f"{f['first_load_ms']:,} ms in headless Chromium, served from 127.0.0.1 (load average "
            f"{f['load_average']} on {f['cpus']} CPUs). JavaScript preprocessing gave the same 28x28 input "
            f"as Python's `to_mnist` on {f['parity_drawings']} drawn digits (mean absolute difference "
            f"{f['parity_mean_abs_diff']:.4f}, largest {f['parity_max_abs_diff']:.4f}, on 0-1 pixels), and "
            f"the page's in-browser Medium read the same digit as Python and PyTorch on "
            f"{f['parity_same_prediction']} of {f['parity_drawings']} ({f['parity_correct']} of "
            f"{f['parity_drawings']} the digit drawn).\n")


def test_the_readme_quotes_the_measured_figures():
    figures = json.loads(FIGURES.read_text())
    assert README_BLOCK.read(README.read_text()) == summary(figures), (
        "README's static-site figures are stale: run TINYDIGITS_SCREENSHOT=1 pytest "
        "tests/test_static_site.py")


class StaticServer:
    """``python -m http.server -d SITE``, in a thread, on a free port of 127.0.0.1."""

    def __init__(self, site: Path) -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=site)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("static") / "site"
    result = CliRunner().invoke(main, ["export", "--format", "web", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    assert "python -m http.server -d" in result.output
    return folder


@pytest.fixture(scope="module")
def static(site):
    server = StaticServer(site)
    yield server
    server.close()


def open_page(browser, server, **options) -> Page:
    options = {"viewport": {"width": 1280, "height": 820}, "reduced_motion": "reduce", **options}
    page = Page(browser, server, where="browser", **options)
    page.page.wait_for_selector("body[data-models-ready=true]")
    return page


def _png_pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L"))


def test_the_export_is_a_self_contained_site(site, mnist):
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert files == sorted([MANIFEST, "index.html", "models.json", "static/app.js", "static/preprocess.js",
                            "static/style.css", *(f"ort/{n}" for n in ORT_WEB_FILES),
                            "models/medium.onnx", "models/small.onnx", "models/ultrasmall.onnx"])
    for name, digest in ORT_WEB_FILES.items():
        assert file_sha256(site / "ort" / name) == digest
    manifest = json.loads((site / MANIFEST).read_text())
    assert set(manifest["files"]) == set(files) - {MANIFEST}
    document = json.loads((site / "models.json").read_text())
    assert document["inference"] == ["browser"] and document["default"] == "medium"
    images = data.normalize(mnist.test_images[:256])
    for info in document["models"]:
        onnx = site / info["onnx"]
        assert onnx.stat().st_size == info["onnx_bytes"] < 40_000
        # The site's model is the shipped model.
        session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        ours = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(ours), shipped_models()[info["name"]](images),
                                       atol=1e-4, rtol=1e-4)
    html = (site / "index.html").read_text()
    assert 'src="static/app.js"' in html and "http" not in html.split("<body")[0]  # nothing from elsewhere


def test_digits_drawn_with_the_mouse_are_read_in_the_browser(browser, static, site, tmp_path):
    page = open_page(browser, static)
    try:
        p = page.page
        ready_ms = p.evaluate("() => performance.getEntriesByName('tinydigits-models-ready')[0].startTime")
        assert not p.locator("#inference").is_visible()  # nothing to switch to without a server
        # Photos and numbers need the server's preprocessing: hidden, and the page says so.
        assert not p.get_by_text("Upload a photo", exact=True).is_visible()
        assert not p.locator("#mode").is_visible()
        assert "nothing you draw leaves this machine" in p.locator("#local-note").inner_text()
        p.get_by_label("All three").check()
        for digit in (1, 7, 0):
            p.get_by_role("button", name="Clear").click()
            page.draw(DIGITS[digit])
            page.idle()
            page.check_reads(digit, models=3)
            assert "nothing you draw leaves this machine" in p.locator("#message").inner_text()
        page.check_stayed_local()
        shot = tmp_path / "static-site.png"
        p.screenshot(path=str(shot), full_page=True)
        if os.environ.get("TINYDIGITS_SCREENSHOT"):
            shutil.copyfile(shot, STATIC_SCREENSHOT)
            files = [f for f in site.rglob("*") if f.is_file()]
            runtime = sum((site / "ort" / name).stat().st_size for name in ORT_WEB_FILES)
            _record(site_bytes=sum(f.stat().st_size for f in files), runtime_bytes=runtime,
                    site_gzip_bytes=sum(len(gzip.compress(f.read_bytes(), 9)) for f in files),
                    first_load_ms=round(ready_ms), load_average=round(os.getloadavg()[0], 1),
                    cpus=os.cpu_count())
    finally:
        page.context.close()


def _record(**figures: object) -> None:
    previous = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}
    FIGURES.write_text(json.dumps({**previous, **figures}, indent=2) + "\n")
    if all(key in previous or key in figures for key in ("site_bytes", "parity_drawings")):
        README_BLOCK.update(README, summary({**previous, **figures}))


def test_phone_sized_window_with_a_finger(browser, static):
    page = open_page(browser, static, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)
    try:
        p = page.page
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        cdp = page.context.new_cdp_session(p)
        for stroke in DIGITS[7]:
            first, *rest = page.points(stroke)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": first[0],
                                                                                        "y": first[1]}]})
            for point in rest:
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                      "touchPoints": [{"x": point[0], "y": point[1]}]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.idle()
        page.check_reads(7)
        assert p.evaluate("window.scrollY") == 0
        page.check_stayed_local()
    finally:
        page.context.close()


# Ten digit shapes as strokes (fractions of the pad), drawn five times each with a random
# slant, size, position and wobble: 50 drawings for the preprocessing parity check.
SHAPES: dict[int, list[Stroke]] = {
    **DIGITS,
    2: [[(0.3, 0.3), (0.4, 0.2), (0.55, 0.18), (0.68, 0.25), (0.7, 0.37), (0.6, 0.5), (0.3, 0.8),
         (0.72, 0.8)]],
    3: [[(0.3, 0.22), (0.55, 0.18), (0.68, 0.28), (0.6, 0.45), (0.45, 0.48), (0.6, 0.5), (0.7, 0.62),
         (0.62, 0.78), (0.45, 0.82), (0.3, 0.76)]],
    4: [[(0.55, 0.18), (0.3, 0.6), (0.75, 0.6)], [(0.62, 0.35), (0.62, 0.85)]],
    5: [[(0.68, 0.2), (0.38, 0.2), (0.35, 0.47), (0.55, 0.45), (0.68, 0.56), (0.66, 0.73), (0.5, 0.82),
         (0.32, 0.76)]],
    6: [[(0.62, 0.18), (0.45, 0.32), (0.35, 0.55), (0.38, 0.75), (0.52, 0.82), (0.65, 0.72), (0.62, 0.57),
         (0.48, 0.52), (0.36, 0.6)]],
    8: [[(0.6, 0.22), (0.48, 0.17), (0.36, 0.25), (0.4, 0.4), (0.6, 0.55), (0.64, 0.72), (0.5, 0.83),
         (0.36, 0.72), (0.4, 0.55), (0.6, 0.4), (0.62, 0.27), (0.6, 0.22)]],
    9: [[(0.64, 0.3), (0.52, 0.2), (0.38, 0.27), (0.38, 0.42), (0.52, 0.48), (0.64, 0.38), (0.64, 0.3),
         (0.62, 0.6), (0.58, 0.83)]],
}


def varied(strokes: list[Stroke], rng: np.random.Generator) -> list[Stroke]:
    # Up to nearly the pad's height: there Python thickens the strokes (preprocess._thicken).
    angle, zoom = math.radians(rng.uniform(-12, 12)), rng.uniform(0.75, 1.35)
    dx, dy = rng.uniform(-0.06, 0.06, size=2)
    out = []
    for stroke in strokes:
        points = []
        for x, y in stroke:
            x, y = x - 0.5, y - 0.5
            x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
            wobble = rng.normal(0, 0.008, size=2)
            x, y = 0.5 + zoom * x + dx + wobble[0], 0.5 + zoom * y + dy + wobble[1]
            points.append((min(max(x, 0.03), 0.97), min(max(y, 0.03), 0.97)))  # on the pad
        out.append(points)
    return out


def test_javascript_preprocessing_matches_python_on_50_drawn_digits(browser, static):
    rng = np.random.default_rng(0)
    medium = shipped_models()["medium"]
    page = open_page(browser, static)
    diffs, same, right = [], 0, 0
    try:
        p = page.page
        for digit in range(10):
            for _ in range(5):
                p.get_by_role("button", name="Clear").click()
                page.draw(varied(SHAPES[digit], rng))
                page.idle()
                canvas = p.evaluate("() => document.getElementById('pad').toDataURL('image/png')")
                ours = _png_pixels(p.locator("#seen").get_attribute("src"))  # what the page's model saw
                python = to_mnist(load_image(base64.b64decode(canvas.split(",", 1)[1]))).numpy()
                assert ours.shape == (28, 28) and ours.max() > 200  # a digit, not an empty picture
                diffs.append(float(np.abs(ours.astype(np.float32) - python.astype(np.float32)).mean() / 255))
                with torch.no_grad():
                    expected = int(medium(data.normalize(torch.from_numpy(python)[None])).argmax())
                shown = int(p.locator("#results .digit").inner_text())
                same += shown == expected
                right += shown == digit
        page.check_stayed_local()
    finally:
        page.context.close()
    mean_diff = float(np.mean(diffs))
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        _record(parity_drawings=len(diffs), parity_mean_abs_diff=round(mean_diff, 6),
                parity_max_abs_diff=round(max(diffs), 6), parity_same_prediction=same, parity_correct=right)
    assert len(diffs) == 50
    assert mean_diff <= 0.02, f"mean |JS - Python| {mean_diff:.4f} on 0-1 pixels"
    assert max(diffs) <= 1 / 255, f"largest mean |JS - Python| of a drawing {max(diffs):.4f}"
    assert same >= 49, f"the same digit as Python + PyTorch on {same} of 50"


# ---------------------------------------------------------------- export errors


def export(*args: str):
    return CliRunner().invoke(main, ["export", "--format", "web", *args])


def one_line_error(result) -> str:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_without_npm_the_export_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached yet
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    line = one_line_error(export("--model", "small", "-o", str(tmp_path / "site")))
    assert "npm is not on PATH" in line and "install Node.js's npm" in line
    assert not (tmp_path / "site").exists()


def test_an_unreachable_registry_is_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "npm"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\n"
                    "echo 'npm error network request failed' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(fake.parent))
    line = one_line_error(export("--model", "small", "-o", str(tmp_path / "site")))
    assert "cannot fetch onnxruntime-web@1.30.0" in line and "ENOTFOUND" in line and "registry" in line


def test_a_damaged_cached_runtime_is_fetched_again(site):
    runtime = fetch_runtime()
    wasm = runtime / "ort-wasm-simd-threaded.wasm"
    wasm.write_bytes(b"\0asm damaged")
    assert fetch_runtime() == runtime_dir() and file_sha256(wasm) == ORT_WEB_FILES[wasm.name]


@pytest.mark.parametrize("where", ["/proc/tinydigits-site", "a-file"])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, where):
    target = Path(where) if where.startswith("/") else tmp_path / where
    if where == "a-file":
        target.write_text("mine")
    line = one_line_error(export("--model", "small", "-o", str(target)))
    assert str(target) in line
    if where == "a-file":
        assert target.read_text() == "mine"


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    (folder / "models").mkdir(parents=True)
    (folder / "notes.txt").write_text("do not touch")
    line = one_line_error(export("--model", "small", "-o", str(folder)))
    assert "holds models" in line or "holds notes.txt" in line
    assert "nothing was written" in line
    assert sorted(p.name for p in folder.rglob("*")) == ["models", "notes.txt"]


def test_exporting_again_replaces_only_the_previous_export(tmp_path):
    folder = tmp_path / "site"
    assert export("-o", str(folder)).exit_code == 0
    assert export("--model", "small", "-o", str(folder)).exit_code == 0  # a previous export: replaced
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["small.onnx"]
    assert [m["name"] for m in json.loads((folder / "models.json").read_text())["models"]] == ["small"]
    (folder / "extra.html").write_text("a user's page")  # now it holds something else
    line = one_line_error(export("--model", "small", "-o", str(folder)))
    assert "holds extra.html" in line and (folder / "extra.html").read_text() == "a user's page"


def test_a_manifest_naming_files_elsewhere_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "site"
    folder.mkdir()
    hostile = [{"../victim.txt": 1}, {str(victim): 1}, {"index.html": 1, "static/../../victim.txt": 1}, [1]]
    for files in hostile:
        (folder / MANIFEST).write_text(json.dumps({"files": files}))
        line = one_line_error(export("--model", "small", "-o", str(folder)))
        assert "not a tinydigits site manifest" in line and victim.read_text() == "keep me"


def test_an_export_killed_half_way_can_be_run_again(tmp_path):
    from tinydigits.deploy.static_site import previous_files

    folder = tmp_path / "site"
    (folder / "static").mkdir(parents=True)
    # What a kill leaves: the manifest listing what was being written, some of it, a temporary file.
    (folder / MANIFEST).write_text(json.dumps({"files": {"index.html": 0, "static/app.js": 0}}))
    (folder / "index.html").write_text("<!doctype html>")
    (folder / "static" / ".app.js.k2j3.tmp").write_text("half")
    assert previous_files(folder) == {"index.html", "static/app.js"}
    assert export("--model", "small", "-o", str(folder)).exit_code == 0
    assert not list(folder.rglob("*.tmp")) and (folder / "static" / "app.js").is_file()


def test_int8_is_refused_for_the_site(tmp_path):
    result = export("--int8", "-o", str(tmp_path / "site"))
    assert result.exit_code == 2 and "Error: --int8 is not available for --format web" in result.output
    assert not (tmp_path / "site").exists()


# ------------------------------------------------- the served page, switched


def test_the_served_page_switches_between_server_and_browser(browser):
    from tinydigits.deploy.serve import BackgroundServer, create_app

    server = BackgroundServer(create_app(shipped_models(), browser_runtime=fetch_runtime()))
    page = Page(browser, server, viewport={"width": 1280, "height": 820}, reduced_motion="reduce")
    try:
        p = page.page
        assert p.locator("#inference").is_visible() and p.get_by_label("On the server").is_checked()
        page.draw(DIGITS[7])
        page.idle()
        page.check_reads(7)
        sent = len([u for u in page.requests if "/api/" in u])
        p.get_by_label("In your browser").check()
        p.wait_for_selector("body[data-models-ready=true]")
        page.where = "browser"
        p.get_by_role("button", name="Clear").click()
        page.draw(DIGITS[1])
        page.idle()
        page.check_reads(1)
        assert len([u for u in page.requests if "/api/" in u]) == sent  # nothing more went to the API
        assert not p.get_by_text("Upload a photo", exact=True).is_visible()
        p.get_by_label("On the server").check()
        page.where = "server"
        page.idle()
        page.check_reads(1)
        assert page.blocked == [] and page.errors == []
    finally:
        page.context.close()
        server.close()
