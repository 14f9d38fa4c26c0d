"""The web demo: draw a digit in the browser and watch the tiny models read it.

:func:`create_app` builds a Flask application serving the page (``web/``: HTML, script
and style, nothing fetched from elsewhere) and a small JSON API; :func:`serve` runs it
under waitress, a production WSGI server, on loopback by default.

API (all answers are JSON; errors are ``{"error": "..."}`` with a 4xx status):

* ``GET /api/models``: the served models with parameters and accuracy.
* ``POST /api/predict``: an image as multipart field ``image`` or as JSON
  ``{"image": "data:image/png;base64,...", "model": "medium"}`` (``model`` is optional,
  also accepted as a form field or query parameter). The image goes through the very
  same :func:`tinydigits.preprocess.load_image` / :func:`~tinydigits.preprocess.to_mnist`
  / :func:`tinydigits.predict.classify` path as ``tinydigits predict``.
* ``POST /api/read``: the same upload as ``/api/predict``; the number in the picture, read
  left to right (:func:`tinydigits.read.read_number`), and each digit's box (in the
  picture's pixels), digit and probability.

Flask and waitress are imported here only, so the core package does not need them
(``pip install 'tinydigits[web]'``).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from flask import Flask, Response, jsonify, request, send_from_directory
from PIL import Image
from torch import nn
from werkzeug.exceptions import HTTPException

from ..errors import ConfigError, TinyDigitsError, first_line
from ..models import MODELS, get_spec
from ..predict import Classifier, classify
from ..preprocess import WORK_SIDE, PreprocessError, load_image, to_mnist
from ..read import read_number
from ..weights import load_model, pretrained_path
from .engines import open_engine
from .static_site import (
    ICON,
    ICON_SVG,
    WEB_MANIFEST,
    browser_model_bytes,
    model_info,
    models_document,
    web_manifest,
)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MAX_IMAGE_PIXELS", "MAX_UPLOAD_BYTES", "ApiError",
           "BackgroundServer", "check_host", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"  # loopback: the demo is for this machine unless asked otherwise
DEFAULT_PORT = 8000
# A phone photo is a few MB; anything much larger is refused before it is read (413).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# And a picture of more pixels than a phone's usual 12-megapixel photo (4032x3024, 4080x3072)
# is refused from its header, before decoding: a few KB of PNG can claim 40 MP, which decode
# to 40-160 MB, times the worker threads. (`tinydigits predict` keeps load_image's 40 MP.)
MAX_IMAGE_PIXELS = 13_000_000
WEB_DIR = Path(__file__).parent / "web"
# Everything the page loads comes from this server; data: and blob: URLs are the
# canvas snapshot, the returned 28x28 image and the local preview of an uploaded photo.
# In-browser inference is plain JavaScript (deploy/web/engine.js): the same policy, no wasm.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                           "script-src 'self'; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

log = logging.getLogger(__name__)


class ApiError(TinyDigitsError):
    """A request the API refuses, with its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _png_data_url(image: torch.Tensor) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")  # uint8 [28, 28] -> grayscale PNG
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_data_url(text: Any) -> bytes:
    """The bytes of ``data:<type>;base64,<data>`` (or bare base64)."""
    if not isinstance(text, str) or not text:
        raise ApiError(400, 'JSON field "image" must be a base64 data URL (data:image/png;base64,...)')
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ApiError(400, 'JSON field "image" must be a base64 data URL (data:image/png;base64,...)')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, 'JSON field "image" is not valid base64') from None


def _read_request() -> tuple[bytes, str | None]:
    """The image bytes and the model name asked for (or None), from multipart or JSON."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("image")  # reading the body enforces MAX_CONTENT_LENGTH (413)
        if upload is None:
            raise ApiError(400, 'no file in multipart field "image"')
        return upload.read(), request.form.get("model") or request.args.get("model")
    if mimetype == "application/json":
        try:
            payload = request.get_json(silent=True)
        except RecursionError:  # e.g. [[[[...]]]] 100,000 deep: Python's decoder recurses per level
            raise ApiError(400, "the body is JSON nested too deeply") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body is not a JSON object")
        if "image" not in payload:
            raise ApiError(400, 'JSON field "image" is missing')
        model = payload.get("model", request.args.get("model"))
        if model is not None and not isinstance(model, str):
            raise ApiError(400, 'JSON field "model" must be a string')
        return _decode_data_url(payload["image"]), model
    raise ApiError(415, f"unsupported content type {mimetype or '(none)'!r}; send multipart/form-data "
                        'with a file field "image", or application/json with a data URL in "image"')


def create_app(models: Sequence[str] | Mapping[str, nn.Module] | None = None, *,
               pretrained: bool = True, backend: str = "auto", max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS, in_browser: bool = False) -> Flask:
    """The Flask application: the page at ``/`` and the JSON API under ``/api``.

    With ``in_browser`` the page may also run the models in the visitor's browser (the
    JavaScript kernels of a static export): ``/models/<name>.json`` is served too, and
    ``models.json`` offers both.

    ``models`` are model names (their shipped weights run on ``backend``, by default the
    fastest engine installed for single pictures: see :mod:`tinydigits.deploy.engines`), or
    loaded modules by name, run by PyTorch and taken to hold the shipped weights unless
    ``pretrained`` is False (then no accuracy is reported); by default all three. ``medium``
    is the default model when a request names none, else the first one. Uploads over
    ``max_upload_bytes`` get a 413, images of more than ``max_image_pixels`` a 400, before
    they are decoded.
    """
    if models is None:
        models = list(MODELS)
    loaded: dict[str, Classifier]
    if isinstance(models, Mapping):
        loaded = {get_spec(name).name: model.eval() for name, model in models.items()}
    else:
        # One intra-op thread per call: a single picture is too small to share out, and the
        # server's threads run several calls at once.
        loaded = {get_spec(name).name: open_engine(name, pretrained_path(name), backend, batch=False,
                                                   threads=1) for name in models}
    if not loaded:
        raise ConfigError("no models to serve")
    default = "medium" if "medium" in loaded else next(iter(loaded))
    # Pictures are preprocessed one at a time, while waitress's other threads decode, read
    # requests, classify and write answers. Preprocessing is many small numpy calls (the GIL,
    # numpy's BLAS threads): run in parallel they only contended, and the load test answered
    # about a quarter fewer requests per second.
    one_at_a_time = threading.Lock()
    infos = [model_info(name, pretrained) for name in loaded]
    weight_files: dict[str, bytes] = {}
    if in_browser:
        modules = models if isinstance(models, Mapping) else {name: load_model(name, pretrained=True)
                                                              for name in loaded}
        weight_files = {get_spec(name).name: browser_model_bytes(module, get_spec(name).name)
                        for name, module in modules.items()}
    page_models = models_document(infos, default, ["server", "browser"] if weight_files else ["server"],
                                  {name: len(data) for name, data in weight_files.items()})

    app = Flask(__name__, static_folder=str(WEB_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    engines = {getattr(engine, "backend", "torch") for engine in loaded.values()}
    app.config["TINYDIGITS_BACKENDS"] = ", ".join(sorted(engines))
    app.json.sort_keys = False  # keep the documented field order

    def error(status: int, message: str) -> tuple[Response, int]:
        return jsonify(error=message), status

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> tuple[Response, int]:
        return error(err.status, err.message)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:
        if not _is_api(request.path):
            return err  # the page's own 404s etc. stay ordinary HTML
        messages = {404: f"no such API endpoint: {request.path}",
                    405: f"method {request.method} not allowed for {request.path}",
                    413: f"upload too large: the limit is {max_upload_bytes:,} bytes"}
        response, status = error(err.code or 500, messages.get(err.code or 500, err.description or err.name))
        if err.code == 405 and hasattr(err, "valid_methods") and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[Response, int]:
        # Last resort: logged here with its traceback, never sent to the client.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if _is_api(request.path):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/")
    def index() -> Response:
        return send_from_directory(WEB_DIR, "index.html")

    @app.get("/models.json")
    def page_models_document() -> Response:
        return jsonify(page_models)

    @app.get("/" + WEB_MANIFEST)
    def manifest() -> Response:
        return Response(web_manifest(), mimetype="application/manifest+json")

    @app.get("/" + ICON)
    def icon() -> Response:
        return Response(ICON_SVG, mimetype="image/svg+xml")

    if in_browser:
        @app.get("/models/<name>.json")
        def weights_file(name: str) -> Response:
            if name not in weight_files:
                return Response("not found", 404, mimetype="text/plain")
            return Response(weight_files[name], mimetype="application/json")

    @app.get("/api/models")
    def list_models() -> Response:
        return jsonify(models=infos, default=default, max_upload_bytes=max_upload_bytes)

    def upload() -> tuple[bytes, str]:
        """The uploaded picture and the model asked for (404 for one not served)."""
        data, name = _read_request()
        name = (name or default).lower()
        if name not in loaded:
            shown = f"{name[:40]!r}" + ("..." if len(name) > 40 else "")  # not megabytes of it
            raise ApiError(404, f"unknown model {shown}; this server has: {', '.join(loaded)}")
        return data, name

    def process(data: bytes, work: Callable[[Image.Image], Any], reduce_to: int | None) -> Any:
        """Decode ``data`` and run ``work`` on the picture: a bad file is a 400, a picture
        without the digits asked for (no ink, too many) a 422."""
        status = 400
        try:
            image = load_image(data, max_pixels=max_image_pixels, reduce_to=reduce_to)
            status = 422  # decoded: from here a PreprocessError means no ink
            with one_at_a_time:
                return work(image)
        except PreprocessError as err:
            raise ApiError(status, str(err)) from None
        except Exception as err:
            # Most likely a picture preprocessing does not foresee, so a 400 for the client;
            # but it may be a bug, so it is logged with its traceback.
            log.warning("cannot process an uploaded image (%d bytes) on %s", len(data), request.path,
                        exc_info=True)
            raise ApiError(400, f"cannot process this image ({type(err).__name__})") from None

    @app.post("/api/read")
    def read() -> Response:
        started = time.perf_counter()
        data, name = upload()
        # Boxes are in the picture's own pixels, so it is decoded at full size.
        reading = process(data, lambda image: read_number(image, loaded[name]), None)
        return jsonify(number=reading.number, digits=[digit.to_dict() for digit in reading.digits],
                       model=name, milliseconds=round((time.perf_counter() - started) * 1000, 2))

    @app.post("/api/predict")
    def predict() -> Response:
        started = time.perf_counter()
        data, name = upload()
        # The same three steps as `tinydigits predict` (predict.predict_image), kept apart
        # here so a bad file (400) is told from a picture without a digit (422) and the
        # model's own time can be reported.
        seen = process(data, to_mnist, WORK_SIDE)
        inference_started = time.perf_counter()
        ranked = classify(loaded[name], seen[None], top_k=10)[0]
        finished = time.perf_counter()
        probabilities = [0.0] * 10
        for digit, probability in ranked:
            probabilities[digit] = probability
        return jsonify(digit=ranked[0][0], probability=ranked[0][1], probabilities=probabilities,
                       model=name, milliseconds=round((finished - started) * 1000, 2),
                       inference_milliseconds=round((finished - inference_started) * 1000, 3),
                       image=_png_data_url(seen))

    return app


def check_host(host: str, port: int = DEFAULT_PORT) -> None:
    """Raise a one-line error unless ``host`` resolves to an address to listen on, as waitress
    resolves it (whose own error, a ValueError, names neither the host nor the fix)."""
    import socket

    name = host.strip("[").rstrip("]") if "[" in host and "]" in host else host  # as waitress reads it
    name = None if name == "*" else name
    try:
        socket.getaddrinfo(name, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                           socket.AI_PASSIVE)
    except (OSError, UnicodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot serve on {host!r}: not an address or a host name this machine "
                          f"resolves ({reason}); give e.g. --host 127.0.0.1 (this machine only) "
                          "or --host 0.0.0.0 (every interface)") from None


def _create_server(app: Flask, host: str, port: int, threads: int) -> Any:
    from waitress import create_server

    check_host(host, port)
    # waitress reads a whole request before the app sees it; its own limit (a plain-text 413)
    # only bounds what it buffers, well above the app's JSON 413 at MAX_CONTENT_LENGTH.
    limit = 8 * (app.config["MAX_CONTENT_LENGTH"] or MAX_UPLOAD_BYTES)
    try:
        return create_server(app, host=host, port=port, threads=threads, max_request_body_size=limit,
                             ident="tinydigits")
    except ValueError as err:  # any other setting waitress refuses
        raise ConfigError(f"cannot serve on {host!r} port {port}: {first_line(err)}") from None


def _urls(server: Any) -> list[str]:
    """The http:// URL of each socket the server listens on (several for a name like localhost)."""
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    return [f"http://[{h}]:{p}" if ":" in str(h) else f"http://{h}:{p}" for h, p in listening]


class BackgroundServer:
    """A waitress server in a daemon thread, on ``host`` and ``port`` (0: a free port); for tests."""

    def __init__(self, app: Flask, host: str = DEFAULT_HOST, port: int = 0, threads: int = 4) -> None:
        self.server = _create_server(app, host, port, threads)
        self.url = _urls(self.server)[0]
        self.thread = threading.Thread(target=self.server.run, name="tinydigits-web", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=5)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, models: Sequence[str] | None = None, *,
          threads: int = 4, backend: str = "auto", announce: Callable[[str], Any] = print,
          in_browser: bool = False) -> None:
    """Serve the demo with waitress (``threads`` worker threads) until Ctrl-C or SIGTERM.
    ``port`` 0 picks a free port; the URL goes to ``announce`` once the socket listens."""
    import signal

    check_host(host, port)  # before the models are loaded
    app = create_app(models, backend=backend, in_browser=in_browser)
    server = _create_server(app, host, port, threads)
    torch_threads = torch.get_num_threads()
    announce(f"tinydigits web demo on {' and '.join(_urls(server))} "
             f"({threads} server thread{'' if threads == 1 else 's'}, "
             f"{torch_threads} torch thread{'' if torch_threads == 1 else 's'}, "
             f"models on {app.config['TINYDIGITS_BACKENDS']}; "
             "Ctrl-C to stop)")

    def stop(signum: int, frame: Any) -> None:  # SIGTERM stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()  # returns after Ctrl-C, having stopped the worker threads
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
