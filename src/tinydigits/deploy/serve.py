"""The web demo: draw a digit in the browser and watch the tiny models read it.

:func:`create_app` builds a Flask application serving the page (``web/``: HTML, script
and style, nothing fetched from elsewhere) and a small JSON API; :func:`serve` runs it
under waitress, a production WSGI server, on loopback by default.

API (all answers are JSON; errors are ``{"error": "..."}`` with a 4xx status):

* ``GET /api/models``: the served digit models (``models``, ``default``) and number readers
  (``readers``, ``default_reader``) with parameters and accuracy.
* ``POST /api/predict``: an image as multipart field ``image`` or as JSON
  ``{"image": "data:image/png;base64,...", "model": "medium"}`` (``model`` is optional,
  also accepted as a form field or query parameter). The image goes through the very
  same :func:`tinydigits.predict.predict_image` as ``tinydigits predict``, so the answer
  also says (``separate_digits``, ``warning``) when the picture holds several digits.
* ``POST /api/read``: the same upload as ``/api/predict``, with an optional ``method``
  (``auto``, ``sequence``, ``segment``); the number in the picture, read left to right
  (:func:`tinydigits.read.read_number`), and each digit's box (in the picture's own
  pixels, as stored and turned upright), digit and probability. By default the number
  reader reads it, the default digit model reading each digit it finds again; ``auto``
  segments with a digit model when the request names one (as the page does), ``segment``
  with the named digit model (default ``medium``).

Flask and waitress are imported here only, so the core package does not need them
(``pip install 'tinydigits[web]'``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
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
from ..models import DEFAULT_READER, MODELS, READERS, get_spec
from ..predict import Classifier, predict_image
from ..preprocess import FORMATS, WORK_SIDE, PreprocessError, load_image
from ..read import METHODS, Reading, read_number
from ..weights import load_model, pretrained_path, shipped_models
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

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_READER", "DEFAULT_SERVER_THREADS", "MAX_IMAGE_PIXELS",
           "MAX_UPLOAD_BYTES", "ApiError", "BackgroundServer", "check_host", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"  # loopback: the demo is for this machine unless asked otherwise
DEFAULT_PORT = 8000
# waitress worker threads. Numbers are read one at a time and each request waiting its turn holds
# a thread, so there must be more threads than clients posting photos to /api/read, or drawings
# sent to /api/predict wait behind them for a thread: with 4 clients posting 12 MP photos, a
# drawing took 31 ms (5.5 times its 5.6 ms alone) with 4 threads, 12.5 ms (1.75 times) with 8,
# on 2 cores (AMD EPYC).
DEFAULT_SERVER_THREADS = 8
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


def _shown(text: str) -> str:
    """A client's value quoted for an error message: not megabytes of it."""
    return f"{text[:40]!r}" + ("..." if len(text) > 40 else "")


class _ModelFailure(TinyDigitsError):
    """A model, not the picture, failed: a server bug, answered 500 rather than the client's 400."""


class _Run:
    """A served model as one request's pipeline calls it (``predict_image``, ``read_number``):
    its calls timed, and its failures told apart from the picture's. One per request, as it
    keeps the request's time; ``task`` lets ``read_number`` tell a reader."""

    def __init__(self, model: Classifier, task: str) -> None:
        self.model = model
        self.task = task
        self.seconds = 0.0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        try:
            with torch.no_grad():  # modules are in eval mode since create_app
                return self.model(inputs)
        except Exception as err:
            raise _ModelFailure(f"{type(err).__name__}: {err}") from err
        finally:
            self.seconds += time.perf_counter() - started


def _stored_size(data: bytes, image: Image.Image) -> tuple[int, int, int]:
    """How many stored pixels each pixel of ``image`` (decoded from ``data``, maybe in JPEG
    draft mode, and turned upright) spans, and the picture's upright size, as its client
    shows it. Only the header is read again. A draft decodes at 1/s (s = 1, 2, 4 or 8) to
    ceil(side / s) pixels, which tells both s and whether EXIF turned the picture."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as stored:
        width, height = stored.size
    scale = max(1, round(max(width, height) / max(image.size)))
    fits = scale * (image.width - 1) < width <= scale * image.width  # not turned a quarter
    return (scale, width, height) if fits else (scale, height, width)


def _in_stored_pixels(reading: Reading, data: bytes, image: Image.Image) -> Reading:
    """``reading`` (of ``image``, decoded from ``data``) with its boxes in the stored picture's
    pixels, where the client draws them, and inside it (the sequence reader's boxes span
    whole working pixels, which can reach past the edge of a picture a few pixels wide)."""
    scale, width, height = _stored_size(data, image)
    return Reading(reading.number, [
        dataclasses.replace(d, x=d.x * scale, y=d.y * scale, width=min(d.width * scale, width - d.x * scale),
                            height=min(d.height * scale, height - d.y * scale)) for d in reading.digits])


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


def _read_request(fields: Sequence[str] = ("model",)) -> tuple[bytes, dict[str, str | None]]:
    """The image bytes and the text ``fields`` asked for (None where not given: form field,
    JSON field or query parameter), from multipart or JSON."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("image")  # reading the body enforces MAX_CONTENT_LENGTH (413)
        if upload is None:
            raise ApiError(400, 'no file in multipart field "image"')
        return upload.read(), {field: request.form.get(field) or request.args.get(field) for field in fields}
    if mimetype == "application/json":
        try:
            payload = request.get_json(silent=True)
        except RecursionError:  # e.g. [[[[...]]]] 100,000 deep: Python's decoder recurses per level
            raise ApiError(400, "the body is JSON nested too deeply") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body is not a JSON object")
        if "image" not in payload:
            raise ApiError(400, 'JSON field "image" is missing')
        values = {field: payload.get(field, request.args.get(field)) for field in fields}
        for field, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f'JSON field "{field}" must be a string')
        return _decode_data_url(payload["image"]), values
    raise ApiError(415, f"unsupported content type {mimetype or '(none)'!r}; send multipart/form-data "
                        'with a file field "image", or application/json with a data URL in "image"')


def create_app(models: Sequence[str] | Mapping[str, nn.Module] | None = None, *,
               pretrained: bool = True, backend: str = "auto", max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS, in_browser: bool = False) -> Flask:
    """The Flask application: the page at ``/`` and the JSON API under ``/api``.

    With ``in_browser`` the page may also run the models in the visitor's browser (the
    JavaScript kernels of a static export): ``/models/<name>.json`` is served too, and
    ``models.json`` offers both.

    ``models`` are digit models and number readers: model names (their shipped weights run on
    ``backend``, by default the fastest engine installed for single pictures: see
    :mod:`tinydigits.deploy.engines`; the shipped ``DEFAULT_READER`` joins names that include
    no reader), or loaded modules by name, served as given, run by PyTorch and taken to hold
    the shipped weights unless ``pretrained`` is False (then no accuracy is reported); by
    default the digit models and that reader. ``medium`` is the default digit model when a
    request names none, else the first one; ``DEFAULT_READER`` the default reader, else the
    first.
    Uploads over ``max_upload_bytes`` get a 413, images of more than ``max_image_pixels`` a
    400, before they are decoded.
    """
    if models is None:
        models = shipped_models("digit")
    loaded: dict[str, Classifier]
    if isinstance(models, Mapping):
        loaded = {get_spec(name).name: model.eval() for name, model in models.items()}
    else:
        names = list(dict.fromkeys(get_spec(name).name for name in models))
        if names and not any(name in READERS for name in names):
            names.append(DEFAULT_READER)
        # One intra-op thread per call: a single picture is too small to share out, and the
        # server's threads run several calls at once.
        loaded = {name: open_engine(name, pretrained_path(name), backend, batch=False, threads=1)
                  for name in names}
    digits = {name: model for name, model in loaded.items() if name not in READERS}
    readers = {name: model for name, model in loaded.items() if name in READERS}
    if not digits:
        raise ConfigError(f"no digit model to serve (the page and /api/predict need one); "
                          f"add one of: {', '.join(MODELS)}")
    default = "medium" if "medium" in digits else next(iter(digits))
    default_reader = DEFAULT_READER if DEFAULT_READER in readers else next(iter(readers), None)
    # Pictures are preprocessed one at a time, while waitress's other threads decode, read
    # requests, classify and write answers. Preprocessing is many small numpy calls (the GIL,
    # numpy's BLAS threads): run in parallel they only contended, and the load test answered
    # about a quarter fewer requests per second.
    one_at_a_time = threading.Lock()
    # Numbers are read one at a time too, decoding included, but apart from the digits: a
    # phone photo's reading takes several times a drawing's classification, and behind a
    # queue of photos the page's drawings would wait; one reading at a time keeps one core
    # for them on a 2-core machine, where several decodes at once took both.
    one_reading_at_a_time = threading.Lock()
    infos = [model_info(name, pretrained) for name in digits]
    reader_infos = [model_info(name, pretrained) for name in readers]
    weight_files: dict[str, bytes] = {}
    # The page's kernels run the digit models and the default reader, as on a static site.
    browser_models = [*digits, *([default_reader] if default_reader else [])]
    if in_browser:
        modules = ({name: models[name] for name in browser_models} if isinstance(models, Mapping)
                   else {name: load_model(name, pretrained=True) for name in browser_models})
        weight_files = {name: browser_model_bytes(module, name) for name, module in modules.items()}
    page_models = models_document(infos, default, ["server", "browser"] if weight_files else ["server"],
                                  {name: len(data) for name, data in weight_files.items()},
                                  reader=model_info(default_reader, pretrained) if default_reader else None)

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
        return jsonify(models=infos, default=default, max_upload_bytes=max_upload_bytes, readers=reader_infos,
                       default_reader=default_reader)

    def served(name: str) -> str:
        """The served model of that name (any case); 404 for one not served."""
        if name.lower() not in loaded:
            raise ApiError(404, f"unknown model {_shown(name)}; this server has: {', '.join(loaded)}")
        return name.lower()

    def read_plan(name: str | None, method: str | None) -> tuple[str, str]:
        """The model and method a /api/read request asks for (see the module docstring)."""
        method = (method or "auto").lower()
        if method not in METHODS:
            raise ApiError(400, f"unknown method {_shown(method)}; choose one of: {', '.join(METHODS)}")
        if not name:
            name = default if method == "segment" or default_reader is None else default_reader
        name = served(name)
        if method == "auto":
            return name, "sequence" if name in readers else "segment"
        if method == "sequence" and name not in readers:
            if not readers:
                raise ApiError(400, "method 'sequence' needs a number reader, and this server has none; "
                                    "use method 'segment'")
            raise ApiError(400, f"method 'sequence' reads with a number reader: send model "
                                f"{default_reader!r} or none")
        if method == "segment" and name in readers:
            raise ApiError(400, f"method 'segment' reads with a digit model ({', '.join(digits)}), "
                                f"not the number reader {name!r}")
        return name, method

    def process(data: bytes, work: Callable[[Image.Image], Any], reduce_to: int | None,
                lock: threading.Lock, decode_locked: bool = False) -> Any:
        """Decode ``data`` and run ``work`` on the picture under ``lock`` (the decoding too with
        ``decode_locked``): a bad file is a 400, a picture without the digits asked for (no
        ink, too many) a 422, a model's failure a 500."""
        status = 400
        try:
            with contextlib.ExitStack() as held:
                if decode_locked:
                    held.enter_context(lock)
                image = load_image(data, max_pixels=max_image_pixels, reduce_to=reduce_to)
                status = 422  # decoded: from here a PreprocessError means no ink
                if not decode_locked:
                    held.enter_context(lock)
                return work(image)
        except PreprocessError as err:
            raise ApiError(status, str(err)) from None
        except _ModelFailure:
            raise  # the unexpected-error handler logs it and answers 500
        except Exception as err:
            # Most likely a picture preprocessing does not foresee, so a 400 for the client;
            # but it may be a bug, so it is logged with its traceback.
            log.warning("cannot process an uploaded image (%d bytes) on %s", len(data), request.path,
                        exc_info=True)
            raise ApiError(400, f"cannot process this image ({type(err).__name__})") from None

    @app.post("/api/read")
    def read() -> Response:
        started = time.perf_counter()
        data, fields = _read_request(("model", "method"))
        name, method = read_plan(fields["model"], fields["method"])
        run = _Run(loaded[name], "number" if name in readers else "digit")
        # The default digit model reads again each digit the reader finds, as on the page.
        second = _Run(digits[default], "digit") if method == "sequence" else None

        def work(image: Image.Image) -> Reading:
            return _in_stored_pixels(read_number(image, run, method, digit_model=second), data, image)

        # A JPEG is decoded in draft mode, at no less than the working size the reading
        # reduces every picture to (a phone photo's full decode alone took most of the time).
        reading = process(data, work, WORK_SIDE, one_reading_at_a_time, decode_locked=True)
        milliseconds = round((time.perf_counter() - started) * 1000, 2)
        return jsonify(number=reading.number, digits=[digit.to_dict() for digit in reading.digits],
                       model=name, method=method, milliseconds=milliseconds)

    @app.post("/api/predict")
    def predict() -> Response:
        started = time.perf_counter()
        data, fields = _read_request()
        name = served(fields["model"] or default)
        if name in readers:
            raise ApiError(400, f"{name!r} is a number reader: post to /api/read, or choose a digit model: "
                                f"{', '.join(digits)}")
        run = _Run(digits[name], "digit")
        # The same pipeline as `tinydigits predict`, on the picture decoded here, so a bad file
        # (400) is told from a picture without a digit (422).
        prediction = process(data, lambda image: predict_image(run, image, top_k=10), WORK_SIDE,
                             one_at_a_time)
        probabilities = [0.0] * 10
        for digit, probability in prediction.top_k:
            probabilities[digit] = probability
        # As `predict --json`: the count and warning only for a picture of several digits.
        several = {key: value for key, value in prediction.to_dict().items()
                   if key in ("separate_digits", "warning")}
        return jsonify(digit=prediction.digit, probability=prediction.probability,
                       probabilities=probabilities, model=name,
                       milliseconds=round((time.perf_counter() - started) * 1000, 2),
                       inference_milliseconds=round(run.seconds * 1000, 3),
                       image=_png_data_url(prediction.image), **several)

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


def _create_server(app: Flask, host: str, port: int, threads: int,
                   sockets: dict[int, Any] | None = None) -> Any:
    """A waitress server, not yet running; ``sockets``: the socket map its loop polls (waitress
    makes one when it is None)."""
    from waitress import create_server

    check_host(host, port)
    # waitress reads a whole request before the app sees it; its own limit (a plain-text 413)
    # only bounds what it buffers, well above the app's JSON 413 at MAX_CONTENT_LENGTH.
    limit = 8 * (app.config["MAX_CONTENT_LENGTH"] or MAX_UPLOAD_BYTES)
    try:
        return create_server(app, map=sockets, host=host, port=port, threads=threads,
                             max_request_body_size=limit, ident="tinydigits")
    except ValueError as err:  # any other setting waitress refuses
        raise ConfigError(f"cannot serve on {host!r} port {port}: {first_line(err)}") from None


def _urls(server: Any) -> list[str]:
    """The http:// URL of each socket the server listens on (several for a name like localhost)."""
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    return [f"http://[{h}]:{p}" if ":" in str(h) else f"http://{h}:{p}" for h, p in listening]


class BackgroundServer:
    """A waitress server in a daemon thread, on ``host`` and ``port`` (0: a free port); for tests."""

    def __init__(self, app: Flask, host: str = DEFAULT_HOST, port: int = 0, threads: int = 4) -> None:
        self._sockets: dict[int, Any] = {}
        self.server = _create_server(app, host, port, threads, self._sockets)
        self.url = _urls(self.server)[0]
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="tinydigits-web", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # Not waitress's run(): closing its sockets from another thread while that loop waits in
        # select() fails the loop with EBADF. This loop wakes every 50 ms and closes the sockets
        # itself once asked to stop.
        from waitress import wasyncore

        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=0.05, map=self._sockets, use_poll=self.server.adj.asyncore_use_poll,
                               count=1)
        finally:
            self.server.task_dispatcher.shutdown()
            wasyncore.close_all(self._sockets)

    def close(self) -> None:
        self._stopping.set()
        self.thread.join(timeout=5)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, models: Sequence[str] | None = None, *,
          threads: int = DEFAULT_SERVER_THREADS, backend: str = "auto",
          announce: Callable[[str], Any] = print, in_browser: bool = False) -> None:
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
