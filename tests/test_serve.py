"""The web demo's HTTP API: answers, the shared preprocessing, numbers read by the number
reader or the segmenter, and a JSON error with the right status for every bad request and
hostile picture, on a real waitress server that keeps serving."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from web_helpers import BAD_INPUTS, DIGITS, blank_png, draw_png, huge_png, png_bytes, shipped_models

import tinydigits
import tinydigits.deploy.serve as serve_module
from tinydigits import data, evaluate, normalize
from tinydigits.cli import main
from tinydigits.deploy.serve import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, BackgroundServer, create_app
from tinydigits.lab.loadtest import Sample, ServerProcess, encode_multipart, phone_photo_jpeg
from tinydigits.models import DEFAULT_READER, MODELS
from tinydigits.predict import predict_image
from tinydigits.preprocess import MAX_PIXELS, load_image
from tinydigits.read import read_number
from tinydigits.segment import MAX_DIGITS
from tinydigits.strips import APART, TOUCHING, number_picture, number_set

pytest.importorskip("flask")
pytest.importorskip("waitress")

SEVEN = draw_png(DIGITS[7])


@pytest.fixture(scope="module")
def app():
    return create_app(shipped_models())


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def live(app):
    """A real waitress server on 127.0.0.1, on a free port."""
    server = BackgroundServer(app)
    yield server
    server.close()


@pytest.fixture(scope="module")
def named_app():
    """Models by name, as `tinydigits serve` gives them: their shipped weights on the fastest
    engine, and the shipped number reader beside them."""
    pytest.importorskip("onnxruntime")
    return create_app(["medium", "small"])


@pytest.fixture(scope="module")
def reading(named_app):
    """``named_app`` on a real waitress server on 127.0.0.1."""
    server = BackgroundServer(named_app)
    yield server
    server.close()


@pytest.fixture(scope="module")
def reader() -> nn.Module:
    """The shipped number reader, run by PyTorch: what the server's engine must agree with."""
    return tinydigits.load_model(DEFAULT_READER, pretrained=True)


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-case names) and body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(client, payload) -> tuple[int, dict]:
    response = client.post("/api/predict", json=payload)
    return response.status_code, response.get_json()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# ------------------------------------------------------------------ answers


def test_models_lists_names_parameters_and_accuracy(client):
    response = client.get("/api/models")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["default"] == "medium" and body["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert [m["name"] for m in body["models"]] == list(shipped_models())
    for info in body["models"]:
        spec = MODELS[info["name"]]
        assert info["parameters"] == spec.parameters and info["title"] == spec.title
        assert 98 < info["test_accuracy"] < 100
        # None for weights trained on all 60k images (no validation split).
        assert info["val_accuracy"] is None or 98 < info["val_accuracy"] < 100


def test_the_accuracy_shown_is_that_of_the_shipped_weights(client, mnist):
    images = normalize(mnist.test_images)
    for info in client.get("/api/models").get_json()["models"]:
        accuracy = evaluate(shipped_models()[info["name"]], images, mnist.test_labels).accuracy
        assert round(accuracy, 2) == round(info["test_accuracy"], 2), info["name"]


def test_a_server_of_model_names_runs_them_on_the_fastest_engine_with_the_same_answers(client, named_app):
    """By name, the shipped weights run on ONNX Runtime (auto, single pictures), not PyTorch eager;
    every answer is the one the PyTorch-backed app gives."""
    assert named_app.config["TINYDIGITS_BACKENDS"] == "onnxruntime"
    engine_client = named_app.test_client()
    for digit in (0, 1, 7):
        png = draw_png(DIGITS[digit])
        for model in ("medium", "small"):
            def form(model: str = model, png: bytes = png) -> dict:
                return {"image": (io.BytesIO(png), "d.png"), "model": model}

            expected = client.post("/api/predict", data=form()).get_json()
            got = engine_client.post("/api/predict", data=form())
            assert got.status_code == 200
            assert got.get_json()["digit"] == expected["digit"] == digit
            assert got.get_json()["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)


def test_modules_not_said_to_be_pretrained_get_no_accuracy():
    fresh = create_app({"small": tinydigits.build_model("small")}, pretrained=False)
    info = fresh.test_client().get("/api/models").get_json()["models"][0]
    assert info["parameters"] == 5_616 and info["test_accuracy"] is None and info["val_accuracy"] is None


@pytest.mark.parametrize("digit", sorted(DIGITS))
def test_predict_multipart_and_json_give_the_cli_answer(client, digit):
    png = draw_png(DIGITS[digit])
    expected = predict_image(shipped_models()["medium"], png, top_k=10)  # what `tinydigits predict` does
    multipart = client.post("/api/predict", data={"image": (io.BytesIO(png), "digit.png")})
    status, as_json = post_json(client, {"image": data_url(png)})
    assert multipart.status_code == status == 200
    for body in (multipart.get_json(), as_json):
        assert list(body) == ["digit", "probability", "probabilities", "model", "milliseconds",
                              "inference_milliseconds", "image"]
        assert body["digit"] == expected.digit == digit and body["model"] == "medium"
        assert body["probabilities"] == [p for _, p in sorted(expected.top_k)]
        assert abs(sum(body["probabilities"]) - 1) < 1e-4
        assert body["probability"] == max(body["probabilities"]) == body["probabilities"][digit]
        assert 0 < body["inference_milliseconds"] <= body["milliseconds"] < 10_000
        # The 28x28 image the model saw, exactly the CLI's preprocessed input.
        assert body["image"].startswith("data:image/png;base64,")
        seen = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1])))
        assert seen.size == (28, 28) and seen.mode == "L"
        assert torch.equal(torch.from_numpy(np.array(seen)), expected.image)


def test_model_is_chosen_by_form_field_json_or_query(client):
    png = draw_png(DIGITS[0])
    for name in shipped_models():
        form = client.post("/api/predict", data={"image": (io.BytesIO(png), "a.png"), "model": name})
        query = client.post(f"/api/predict?model={name.upper()}", data={"image": (io.BytesIO(png), "a.png")})
        _, body = post_json(client, {"image": data_url(png), "model": name.capitalize()})
        for answer in (form.get_json(), query.get_json(), body):
            assert answer["model"] == name and answer["digit"] == 0


def test_a_server_with_fewer_models_refuses_the_others():
    app = create_app({"small": shipped_models()["small"]})
    client = app.test_client()
    assert client.get("/api/models").get_json()["default"] == "small"
    assert post_json(client, {"image": data_url(SEVEN)})[1]["model"] == "small"
    status, body = post_json(client, {"image": data_url(SEVEN), "model": "medium"})
    assert status == 404 and body == {"error": "unknown model 'medium'; this server has: small"}


def test_the_page_and_its_files_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    # Relative links: the same page works from a static site's folder (tinydigits export --format web).
    links = {"static/app.js", "static/preprocess.js", "static/style.css"}
    assert links <= set(re.findall(r'(?:src|href)="([^"]+)"', html))
    for path, kind in [("/static/app.js", "text/javascript"), ("/static/preprocess.js", "text/javascript"),
                       ("/static/style.css", "text/css")]:
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == kind
        text = response.get_data(as_text=True)
        # Nothing fetched from anywhere else: no absolute URLs, no web fonts, no imports.
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|@font-face|url\(", text), path
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
    for path in ("/nope", "/apiary"):  # outside /api: an ordinary page
        response = client.get(path)
        assert response.status_code == 404 and response.mimetype == "text/html"


# Ways out of the static folder (src/tinydigits/web/) to the package's source, as sent on the
# wire: dot segments plain and percent-encoded, encoded slashes and backslashes, absolute paths.
TRAVERSALS = ["/static/../serve.py", "/static/%2e%2e/serve.py", "/static/%2E%2E/serve.py",
              "/static/..%2fserve.py", "/static/%2e%2e%2fserve.py", "/static/..%5cserve.py",
              "/static/..\\serve.py", "/static/../../tinydigits/serve.py", "/static/./../serve.py",
              "/static/%2e%2e/%2e%2e/tinydigits/__init__.py", "/static/../weights/manifest.json",
              "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/../../../../../../etc/passwd",
              "/../serve.py", "/%2e%2e/serve.py", "/static/app.js/../../serve.py"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_outside_the_static_folder_is_served(live, path):
    status, headers, body = request(live.url, "GET", path)
    if status == 308:  # "//" is merged into "/" by a redirect, which must stay inside /static/
        target = urlsplit(headers["location"])
        assert target.path.startswith("/static/") and ".." not in target.path, target
        status, _, body = request(live.url, "GET", target.path)
    assert status == 404, (status, body[:200])
    assert b"import " not in body and b"sha256" not in body and b"root:" not in body
    assert request(live.url, "GET", "/static/app.js")[0] == 200  # the real files still are


# ------------------------------------------------------------------ errors


def multipart(fields: dict) -> tuple[bytes, dict[str, str]]:
    body, kind = encode_multipart(fields)
    return body, {"Content-Type": kind}


def upload(data: bytes, model: str | None = None) -> tuple[bytes, dict[str, str]]:
    fields: dict = {"image": ("picture.png", data, "image/png")}
    if model is not None:
        fields["model"] = model
    return multipart(fields)


def as_json(payload) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


LIMIT_MP = f"{MAX_IMAGE_PIXELS / 1e6:g}"

# (method, path, body and headers, status, text in the error message)
ERROR_CASES = {
    **{f"image_{name}": ("POST", "/api/predict", upload(make()), 422 if message == "no ink" else 400, message)
       for name, (make, message) in BAD_INPUTS.items()},
    "bomb_json": ("POST", "/api/predict", as_json({"image": data_url(huge_png(20000, 20000))}), 400,
                  "too large"),
    # Valid 1-bit PNGs of a few KB: one of 400 MP, one over the server's limit but under
    # load_image's own (which would have decoded it).
    "bomb_1bit_400mp": ("POST", "/api/predict", upload(blank_png(20000, 20000)), 400,
                        f"image too large (refused before decoding; the limit is {LIMIT_MP} megapixels)"),
    "over_server_pixel_limit": ("POST", "/api/predict", as_json({"image": data_url(blank_png(5000, 4000))}),
                                400, f"5000x4000 is 20.0 megapixels, the limit is {LIMIT_MP} (refused"),
    "too_large_upload": ("POST", "/api/predict", upload(b"\x89PNG" + bytes(MAX_UPLOAD_BYTES + 1000)), 413,
                         "upload too large"),
    "too_large_json": ("POST", "/api/predict", as_json({"image": "A" * (MAX_UPLOAD_BYTES + 8)}), 413,
                       "upload too large"),
    "no_image_field": ("POST", "/api/predict", multipart({"model": "small"}), 400, 'field "image"'),
    "json_without_image": ("POST", "/api/predict", as_json({"model": "small"}), 400, '"image" is missing'),
    "json_not_an_object": ("POST", "/api/predict", as_json(["image"]), 400, "not a JSON object"),
    "json_malformed": ("POST", "/api/predict", (b'{"image": ', {"Content-Type": "application/json"}), 400,
                       "not a JSON object"),
    # Python's JSON decoder recurses once per level: 100,000 levels used to be a 500.
    "json_nested_deeply": ("POST", "/api/predict", (b"[" * 100_000 + b"]" * 100_000,
                                                    {"Content-Type": "application/json"}), 400,
                           "nested too deeply"),
    "json_nested_in_image": ("POST", "/api/predict", (b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                                      {"Content-Type": "application/json"}), 400,
                             "nested too deeply"),
    "json_image_not_text": ("POST", "/api/predict", as_json({"image": 7}), 400, "base64 data URL"),
    "json_bad_base64": ("POST", "/api/predict", as_json({"image": "data:image/png;base64,@@@"}), 400,
                        "not valid base64"),
    "json_not_base64_url": ("POST", "/api/predict", as_json({"image": "data:image/png,abc"}), 400,
                            "base64 data URL"),
    "json_model_not_text": ("POST", "/api/predict", as_json({"image": data_url(SEVEN), "model": 3}), 400,
                            '"model" must be a string'),
    "json_not_an_image": ("POST", "/api/predict", as_json({"image": data_url(b"GIF89a garbage")}), 400,
                          "not an image"),
    "unknown_model": ("POST", "/api/predict", upload(SEVEN, "huge"), 404, "unknown model 'huge'"),
    "unknown_model_json": ("POST", "/api/predict", as_json({"image": data_url(SEVEN), "model": "x"}), 404,
                           "unknown model"),
    "unknown_model_long": ("POST", "/api/predict", as_json({"image": data_url(SEVEN), "model": "m" * 10**6}),
                           404, f"unknown model '{'m' * 40}'...; this server has: medium, small, ultrasmall"),
    "get_predict": ("GET", "/api/predict", (None, {}), 405, "method GET not allowed"),
    "put_predict": ("PUT", "/api/predict", upload(SEVEN), 405, "method PUT not allowed"),
    "post_models": ("POST", "/api/models", as_json({}), 405, "method POST not allowed"),
    "text_body": ("POST", "/api/predict", (b"hello", {"Content-Type": "text/plain"}), 415,
                  "unsupported content type 'text/plain'"),
    "raw_png_body": ("POST", "/api/predict", (SEVEN, {"Content-Type": "image/png"}), 415,
                     "unsupported content type"),
    "no_content_type": ("POST", "/api/predict", (SEVEN, {}), 415, "unsupported content type"),
    "form_urlencoded": ("POST", "/api/predict", (b"image=abc", {"Content-Type":
                                                               "application/x-www-form-urlencoded"}), 415,
                        "unsupported content type"),
    "unknown_route": ("GET", "/api/nothing/here", (None, {}), 404, "no such API endpoint: /api/nothing/here"),
    "api_root": ("GET", "/api", (None, {}), 404, "no such API endpoint"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(live, case):
    method, path, (body, headers), status, message = ERROR_CASES[case]
    got, answer_headers, answer = request(live.url, method, path, body, headers)
    assert got == status, answer
    assert answer_headers["content-type"] == "application/json"
    error = json.loads(answer)
    assert list(error) == ["error"] and message in error["error"]
    assert "\n" not in error["error"] and "Traceback" not in error["error"] and len(error["error"]) < 200
    if status == 405:
        assert answer_headers["allow"]
    # ... and the next request is answered normally.
    status, _, good = request(live.url, "POST", "/api/predict", *upload(SEVEN))
    assert status == 200 and json.loads(good)["digit"] == 7


def test_a_closed_server_stops_its_thread_and_port_without_an_error(app, monkeypatch):
    """Closing right after a request, ten times over: the server thread ends without an
    exception (closing waitress's sockets under its select() once failed it with EBADF) and
    the port stops answering."""
    errors = []
    monkeypatch.setattr("threading.excepthook", errors.append)
    for _ in range(10):
        server = BackgroundServer(app)
        status, _, _ = request(server.url, "GET", "/api/models", None, {})
        assert status == 200
        server.close()
        assert not server.thread.is_alive()
        host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
        with pytest.raises(OSError), socket.create_connection((host, port), timeout=2):
            pass
    assert errors == []


class Broken(nn.Module):
    def forward(self, images):
        raise RuntimeError("secret internal detail")


@pytest.mark.parametrize("path", ["/api/predict", "/api/read"])
def test_a_failing_model_is_a_json_500_without_traceback(path, caplog):
    """A model's failure is the server's (500), not the picture's (400)."""
    client = create_app({"medium": Broken(), "reader": Broken()}, pretrained=False).test_client()
    for method in ("sequence", "segment") if path == "/api/read" else ("",):
        payload = {"image": data_url(SEVEN), **({"method": method} if method else {})}
        response = client.post(path, json=payload)
        assert response.status_code == 500 and response.get_json() == {"error": "internal error"}
    assert "secret internal detail" in caplog.text  # logged on the server, not sent


def test_a_failing_digit_model_reading_again_for_the_reader_is_a_500():
    reader = tinydigits.load_model(DEFAULT_READER, pretrained=True)
    client = create_app({"medium": Broken(), DEFAULT_READER: reader}, pretrained=False).test_client()
    response = client.post("/api/read", json={"image": data_url(SEVEN), "method": "sequence"})
    assert response.status_code == 500 and response.get_json() == {"error": "internal error"}


def test_the_pixel_limit_is_below_load_images_and_lets_a_phone_photo_through(client):
    assert 4080 * 3072 < MAX_IMAGE_PIXELS < 5000 * 4000 < MAX_PIXELS  # what the cases above rely on
    # A 12.5 MP picture is decoded (then found blank), not refused.
    response = client.post("/api/predict", data={"image": (io.BytesIO(blank_png(4080, 3072)), "a.png")})
    assert response.status_code == 422 and "no ink" in response.get_json()["error"]
    small = create_app({"small": shipped_models()["small"]}, max_image_pixels=10_000).test_client()
    status, body = post_json(small, {"image": data_url(SEVEN)})  # 280x280 = 78,400 pixels
    assert status == 400 and "280x280 is 0.1 megapixels, the limit is 0.01" in body["error"]


def test_an_unforeseen_preprocessing_failure_is_a_400_and_logged(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("internal detail")

    monkeypatch.setattr(tinydigits.predict, "fit_to_mnist", broken)  # in predict_image, as the CLI runs it
    client = create_app({"medium": shipped_models()["medium"]}).test_client()
    with caplog.at_level("WARNING", logger="tinydigits.deploy.serve"):
        status, body = post_json(client, {"image": data_url(SEVEN)})
    assert status == 400 and body == {"error": "cannot process this image (ZeroDivisionError)"}
    [record] = [r for r in caplog.records if r.name == "tinydigits.deploy.serve"]
    assert record.levelname == "WARNING" and "cannot process an uploaded image" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is ZeroDivisionError  # the traceback, on the server
    assert "internal detail" in caplog.text


def test_same_answers_over_keep_alive_from_the_load_test_client(live):
    """The load test's request bodies are valid API requests."""
    sample = Sample(7, SEVEN)
    for body, kind in (sample.multipart("small"), sample.json("ultrasmall")):
        status, _, answer = request(live.url, "POST", "/api/predict", body, {"Content-Type": kind})
        assert status == 200 and json.loads(answer)["digit"] == 7


# ------------------------------------------------------------------ the command


def test_serve_command_starts_answers_and_stops_on_ctrl_c():
    with ServerProcess(["small", "ultrasmall"], server_threads=2, torch_threads=1) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert server.torch_threads == 1  # announced by the server: its --threads
        status, _, body = request(server.url, "GET", "/api/models")
        assert status == 200 and [m["name"] for m in json.loads(body)["models"]] == ["small", "ultrasmall"]
        status, _, body = request(server.url, "POST", "/api/predict", *upload(SEVEN))
        assert status == 200 and json.loads(body)["model"] == "small"
    assert server.process.returncode == 0  # SIGINT, as Ctrl-C: a clean stop
    assert "Traceback" not in server.stderr()


def test_serve_command_reports_a_busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port), "--models", "small"])
    assert result.exit_code == 1
    assert f"Error: cannot serve on 127.0.0.1:{port}" in result.output + result.stderr


@pytest.mark.parametrize("host", ["127.0.0.5x", "[::1"])
def test_serve_command_names_a_host_it_cannot_listen_on(host):
    result = CliRunner().invoke(main, ["serve", "--host", host, "--models", "small"])
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()  # waitress's own error was a ValueError's traceback
    assert line.startswith(f"Error: cannot serve on {host!r}: not an address or a host name this machine "
                           "resolves ("), line
    assert line.endswith("); give e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 "
                         "(every interface)"), line
    serve_module.check_host("127.0.0.1")  # and a good one passes
    serve_module.check_host("[::1]")  # bracketed as in a URL, as waitress reads it


def test_models_json_offers_the_server_only_unless_asked(client):
    document = client.get("/models.json").get_json()
    assert document["inference"] == ["server"] and document["default"] == "medium"
    assert [m["name"] for m in document["models"]] == list(shipped_models())
    assert all("weights" not in m for m in document["models"])
    assert client.get("/models/medium.json").status_code == 404
    assert "wasm" not in client.get("/").headers["Content-Security-Policy"]  # nothing compiles here
    # The page's web app manifest and icon are always there.
    assert client.get("/manifest.webmanifest").get_json()["icons"][0]["src"] == "static/icon.svg"
    assert client.get("/static/icon.svg").data.startswith(b"<svg")


def test_in_browser_inference_serves_the_models_weights(tmp_path):
    client = create_app({"small": shipped_models()["small"]}, in_browser=True).test_client()
    document = client.get("/models.json").get_json()
    assert document["inference"] == ["server", "browser"]
    (info,) = document["models"]
    response = client.get("/" + info["weights"])
    assert response.status_code == 200 and len(response.data) == info["weights_bytes"]
    assert response.get_json()["format"] == "tinydigits-js-1"
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "eval" not in policy  # plain JavaScript: no wasm, no eval
    for path in ("/ort/ort.wasm.min.js", "/models/medium.json", "/models/..%2fsecret.json",
                 "/models/small.onnx"):
        assert client.get(path).status_code == 404, path


# ------------------------------------------------------------------ numbers


def read_form(picture: bytes, **fields: str) -> tuple[bytes, dict[str, str]]:
    return multipart({"image": ("picture", picture, "application/octet-stream"), **fields})


def post_read(url: str, body: tuple[bytes, dict[str, str]]) -> tuple[int, dict]:
    status, _, answer = request(url, "POST", "/api/read", *body)
    return status, json.loads(answer)


def boxes(answer: dict) -> list[tuple[int, int, int, int]]:
    return [(d["box"]["x"], d["box"]["y"], d["box"]["width"], d["box"]["height"]) for d in answer["digits"]]


def assert_inside(answer: dict, size: tuple[int, int]) -> None:
    for x, y, width, height in boxes(answer):
        assert x >= 0 and y >= 0 and width > 0 and height > 0, answer
        assert x + width <= size[0] and y + height <= size[1], (size, answer)


@pytest.fixture(scope="module")
def numbers(mnist: data.MNIST) -> list:
    """Pictures of touching digits from the frozen test set, then of separate ones."""
    return number_set("touching", count=8, mnist=mnist) + number_set("separate", count=4, mnist=mnist)


def test_the_models_list_names_the_reader_apart_from_the_digit_models(named_app):
    client = named_app.test_client()
    body = client.get("/api/models").get_json()
    assert [m["name"] for m in body["models"]] == ["medium", "small"] and body["default"] == "medium"
    assert [m["name"] for m in body["readers"]] == [DEFAULT_READER]
    assert body["default_reader"] == DEFAULT_READER
    assert body["readers"][0]["parameters"] == tinydigits.models.get_spec(DEFAULT_READER).parameters
    # The page builds its cards from models.json: digit models only.
    assert [m["name"] for m in client.get("/models.json").get_json()["models"]] == ["medium", "small"]


def test_read_uses_the_number_reader_by_default_and_reads_as_pytorch(reading, reader, numbers):
    """No model, no method: the shipped reader (on ONNX Runtime) reads the picture as the PyTorch
    reader does in-process."""
    right = 0
    for picture in numbers:
        status, answer = post_read(reading.url, read_form(picture.data))
        assert status == 200, answer
        assert list(answer) == ["number", "digits", "model", "method", "milliseconds"]
        assert answer["model"] == DEFAULT_READER and answer["method"] == "sequence"
        expected = read_number(picture.data, reader)
        assert answer["number"] == expected.number and len(answer["digits"]) == len(expected.digits)
        assert boxes(answer) == [(d.x, d.y, d.width, d.height) for d in expected.digits]
        assert all(0 < d["probability"] <= 1 for d in answer["digits"])
        right += answer["number"] == picture.number
    assert right >= len(numbers) // 2, right  # the reader's figures are in docs/READING.md


def test_read_method_and_model_choose_the_reader_or_the_segmenter(reading, numbers):
    picture = numbers[-1]
    medium, small = shipped_models()["medium"], shipped_models()["small"]
    cases = [  # (fields, model and method answered, in-process reading)
        ({"method": "segment"}, ("medium", "segment"), read_number(picture.data, medium, "segment")),
        ({"model": "small"}, ("small", "segment"), read_number(picture.data, small)),  # as the page asks
        ({"model": DEFAULT_READER.upper(), "method": "AUTO"}, (DEFAULT_READER, "sequence"), None),
        ({"method": "sequence"}, (DEFAULT_READER, "sequence"), None),
    ]
    for fields, (model, method), expected in cases:
        status, answer = post_read(reading.url, read_form(picture.data, **fields))
        assert status == 200 and (answer["model"], answer["method"]) == (model, method), (fields, answer)
        if expected is not None:
            assert answer["number"] == expected.number
    # The same fields in JSON.
    payload = {"image": data_url(picture.data), "model": "medium", "method": "segment"}
    status, _, answer = request(reading.url, "POST", "/api/read", *as_json(payload))
    assert status == 200 and json.loads(answer)["method"] == "segment"


READ_ERRORS = {  # (path, fields, status, the error message)
    "sequence_with_a_digit_model": ("/api/read", {"model": "medium", "method": "sequence"}, 400,
                                    f"method 'sequence' reads with a number reader: send model "
                                    f"'{DEFAULT_READER}' or none"),
    "segment_with_the_reader": ("/api/read", {"model": DEFAULT_READER, "method": "segment"}, 400,
                                "method 'segment' reads with a digit model (medium, small), not the number "
                                f"reader '{DEFAULT_READER}'"),
    "unknown_method": ("/api/read", {"method": "sideways"}, 400,
                       "unknown method 'sideways'; choose one of: auto, sequence, segment"),
    "unknown_model": ("/api/read", {"model": "huge"}, 404,
                      f"unknown model 'huge'; this server has: medium, small, {DEFAULT_READER}"),
    "reader_on_predict": ("/api/predict", {"model": DEFAULT_READER}, 400,
                          f"'{DEFAULT_READER}' is a number reader: post to /api/read, or choose a digit "
                          "model: medium, small"),
}


@pytest.mark.parametrize("case", list(READ_ERRORS))
def test_a_method_and_model_that_do_not_go_together_are_one_line_errors(reading, case):
    path, fields, status, message = READ_ERRORS[case]
    got, _, answer = request(reading.url, "POST", path, *read_form(SEVEN, **fields))
    assert got == status and json.loads(answer) == {"error": message}


def test_a_method_that_is_not_text_is_a_400(reading):
    body = as_json({"image": data_url(SEVEN), "method": 3})
    status, _, answer = request(reading.url, "POST", "/api/read", *body)
    assert status == 400 and json.loads(answer) == {"error": 'JSON field "method" must be a string'}


def test_a_server_of_digit_modules_only_segments(client):
    """Modules are served as given: without a reader, /api/read segments, and refuses the sequence method."""
    answer = client.post("/api/read", data={"image": (io.BytesIO(SEVEN), "a.png")}).get_json()
    assert (answer["number"], answer["model"], answer["method"]) == ("7", "medium", "segment")
    refused = client.post("/api/read", data={"image": (io.BytesIO(SEVEN), "a.png"), "method": "sequence"})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == ("method 'sequence' needs a number reader, and this server has "
                                           "none; use method 'segment'")
    assert client.get("/api/models").get_json()["readers"] == []


def upright_size(photo: bytes) -> tuple[int, int]:
    return load_image(photo).size


def test_a_12mp_photo_is_decoded_in_draft_mode_and_boxed_in_its_own_pixels(reading, reader, numbers,
                                                                           monkeypatch):
    """The JPEG is decoded at a quarter of its size (both sides still at least the 512 pixels the
    reading works at); the boxes come back in the photo's pixels, upright as EXIF turns it, where
    a full decode read in-process puts them."""
    decoded = []

    def spy(*args, **kwargs):
        image = load_image(*args, **kwargs)
        decoded.append(image.size)
        return image

    monkeypatch.setattr(serve_module, "load_image", spy)
    photo = phone_photo_jpeg(Image.open(io.BytesIO(numbers[-1].data)))
    turned = Image.open(io.BytesIO(photo)).transpose(Image.Transpose.ROTATE_90)  # stored on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and EXIF says: turn it a quarter clockwise to show it
    buffer = io.BytesIO()
    turned.save(buffer, format="JPEG", quality=90, exif=exif)
    assert upright_size(photo) == upright_size(buffer.getvalue()) == (4032, 3024)
    full = read_number(load_image(photo), reader)
    for data_ in (photo, buffer.getvalue()):
        status, answer = post_read(reading.url, read_form(data_))
        assert status == 200, answer
        assert decoded[-1] == (1008, 756)
        assert answer["number"] == full.number
        assert_inside(answer, (4032, 3024))
        expected = [(d.x, d.y, d.width, d.height) for d in full.digits]
        for got, want in zip(boxes(answer), expected, strict=True):
            # Within 2 pixels of the 504x378 working copy (a draft decode is not bit-exact).
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 16, (got, want)


def test_predict_says_when_the_picture_holds_several_digits(client, numbers):
    """/api/predict is predict_image, as the CLI runs it: its warning included."""
    picture = numbers[-1]  # separate digits
    expected = predict_image(shipped_models()["medium"], picture.data, top_k=10)
    answer = client.post("/api/predict", data={"image": (io.BytesIO(picture.data), "n.png")})
    assert answer.status_code == 200
    body = answer.get_json()
    assert list(body) == ["digit", "probability", "probabilities", "model", "milliseconds",
                          "inference_milliseconds", "image", "separate_digits", "warning"]
    assert body["separate_digits"] == len(picture.number) == expected.separate_digits
    assert body["warning"] == expected.warning and "separate digits" in body["warning"]
    assert body["digit"] == expected.digit and body["probability"] == expected.probability


# ------------------------------------------------------------------ hostile pictures of numbers


def row_of_digits(mnist: data.MNIST, count: int, gaps: tuple[float, float]) -> bytes:
    rng = np.random.default_rng(count)
    image, _, _ = number_picture([mnist.test_images[i].numpy() for i in range(count)], rng, gaps=gaps)
    return png_bytes(image)


def line_under(picture: bytes) -> bytes:
    """The picture with a ruled line drawn under its ink, across most of its width."""
    image = load_image(picture).convert("RGB")
    ink = np.flatnonzero((np.asarray(image.convert("L")) < 128).any(axis=1))
    y = min(image.height - 3, int(ink[-1]) + 6)
    ends = [(image.width // 20, y), (image.width * 19 // 20, y)]
    ImageDraw.Draw(image).line(ends, fill=(30, 30, 30), width=3)
    return png_bytes(image)


def strip_png(width: int, height: int) -> bytes:
    """A picture one pixel thin (``width`` x ``height``), a line of ink along most of it."""
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).line([(width // 20, height // 20), (width * 19 // 20, height * 19 // 20)], fill=0)
    return png_bytes(image)


def letters_png() -> bytes:
    image = Image.new("L", (700, 220), 255)
    ImageDraw.Draw(image).text((30, 30), "ABCxy", fill=0, font=ImageFont.load_default(size=140))
    return png_bytes(image)


# name -> (the picture, from the MNIST set; the statuses allowed for the reader (method sequence)
# and for the segmenter; text the reader's error must hold)
HOSTILE = {
    "blank": (lambda mnist: png_bytes(Image.new("RGB", (900, 300), (235, 230, 210))), {422}, {422}, "no ink"),
    "more_than_32_separate_digits": (lambda mnist: row_of_digits(mnist, MAX_DIGITS + 8, APART), {422}, {422},
                                     f"up to {MAX_DIGITS}"),
    # The segmenter cuts only so many touching digits apart, so it may answer fewer than 32.
    "more_than_32_touching_digits": (lambda mnist: row_of_digits(mnist, MAX_DIGITS + 8, TOUCHING), {422},
                                     {200, 422}, f"up to {MAX_DIGITS}"),
    "strip_1x4000": (lambda mnist: strip_png(4000, 1), {422}, {200, 422}, "wider than tall"),
    "strip_4000x1": (lambda mnist: strip_png(1, 4000), {200, 422}, {200, 422}, ""),
    "letters": (lambda mnist: letters_png(), {200, 422}, {200, 422}, ""),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_pictures_get_a_clear_answer_and_the_server_keeps_reading(reading, mnist, numbers, case):
    make, by_reader, by_segmenter, message = HOSTILE[case]
    picture = make(mnist)
    for method, statuses in (("sequence", by_reader), ("segment", by_segmenter)):
        status, answer = post_read(reading.url, read_form(picture, method=method))
        assert status in statuses, (method, answer)
        if status == 200:  # a reading, maybe unsure, with its boxes inside the picture
            assert answer["number"].isdigit() and all(0 < d["probability"] <= 1 for d in answer["digits"])
            assert_inside(answer, Image.open(io.BytesIO(picture)).size)
        else:  # one line; the reader's names the problem (the segmenter may see another first)
            assert list(answer) == ["error"] and "\n" not in answer["error"] and len(answer["error"]) < 200
            assert method == "segment" or message in answer["error"], answer
    status, answer = post_read(reading.url, read_form(numbers[0].data))  # ... and the next one is read
    assert status == 200 and answer["number"].isdigit()


def test_a_line_under_the_number_changes_nothing(reading, reader, numbers):
    for picture in numbers[-4:]:  # separate digits
        if read_number(picture.data, reader).number != picture.number:
            continue  # the line's effect is what is tested, on numbers read right without it
        status, answer = post_read(reading.url, read_form(line_under(picture.data)))
        assert status == 200 and answer["number"] == picture.number, (picture.number, answer)
        return
    pytest.fail("the reader read none of the pictures right")
