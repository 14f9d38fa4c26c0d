"""A bounded load test of the web demo: concurrent clients posting drawn digits.

The inputs are real MNIST test digits drawn as dark ink on white (as on the page's
canvas), and only those the model reads correctly in-process, through the same
:func:`tinydigits.predict.predict_image` path, so that every answer can be checked
against its input: an answer is right only if it is the digit drawn. The server runs in
a subprocess (``python -m tinydigits serve``) so its peak memory can be read from
``/proc/<pid>/status`` (``VmHWM``) and nothing in the load generator inflates it.

With ``readers``, more clients post 12-megapixel phone photos of numbers to ``/api/read``
meanwhile (the heaviest request the server takes), after a first round of the same drawn
digits alone: the report says how much slower a drawing is answered beside photos of numbers.

    tinydigits loadtest --clients 20 --duration 20 -o docs/LOADTEST.md
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import io
import json
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn
from urllib.parse import urlsplit

import torch
from PIL import Image
from torch import nn

from ..data import MNIST, load_mnist
from ..errors import TinyDigitsError
from ..markdown import markdown_table
from ..models import DEFAULT_READER
from ..runtime import cpu_name, load_average, peak_rss_kib
from ..weights import get_weights, load_model
from .commands import python_module_argv, tinydigits_line

__all__ = ["LoadResult", "LoadTestError", "NumberPhoto", "Sample", "ServerProcess", "drawn_samples",
           "encode_multipart", "load_test", "number_photos", "parse_url", "run_load", "single_client_read_ms"]

BOUNDARY = "tinydigits-load-test-boundary"
# A client's n-th request: the path, body, content type, and a check of the JSON answer that
# says what is wrong with it (None: right).
Request = tuple[str, bytes, str, Callable[[dict[str, Any]], str | None]]


class LoadTestError(TinyDigitsError):
    """A load test that cannot run (a bad URL, a server that does not start); one-line message."""


def parse_url(url: str) -> tuple[str, int]:
    """The host and port of a plain-HTTP server URL ``http://HOST:PORT`` (port 80 if left out)."""
    expected = f"expected http://HOST:PORT, got {url[:80]!r}"
    parts = urlsplit(url.strip())
    if parts.scheme == "https":
        raise LoadTestError(f"the load test speaks plain HTTP only, not https; {expected}")
    if parts.scheme != "http" or not parts.hostname:
        raise LoadTestError(f"not an http:// URL; {expected}")
    try:
        port = parts.port
    except ValueError:
        raise LoadTestError(f"not a valid port; {expected}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise LoadTestError(f"requests go to /api/predict at the server's root, so give no path, query "
                            f"or user; {expected}")
    return parts.hostname, 80 if port is None else port


def encode_multipart(fields: Mapping[str, str | tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; a field is text, or a file as
    ``(file name, bytes, content type)``."""
    chunks: list[bytes] = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data, kind = value
            chunks += [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
                       f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'.encode(), data, b"\r\n"]
        else:
            chunks.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                          f"{value}\r\n".encode())
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Sample:
    """One request body, in both forms the API takes, and the digit it shows."""

    label: int
    png: bytes

    def multipart(self, model: str) -> tuple[bytes, str]:
        return encode_multipart({"model": model, "image": ("digit.png", self.png, "image/png")})

    def json(self, model: str) -> tuple[bytes, str]:
        url = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        return json.dumps({"image": url, "model": model}).encode(), "application/json"


def draw_like_canvas(digit: torch.Tensor, size: int = 112) -> bytes:
    """A uint8 [28, 28] MNIST digit as a PNG of dark ink on white, ``size`` pixels square."""
    image = Image.fromarray(255 - digit.numpy()).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_samples(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  count: int = 200) -> list[Sample]:
    """The first ``count`` test digits, drawn as PNGs, that ``model`` reads correctly in-process
    (preprocessing included), so each one's right answer is known."""
    from ..predict import predict_image

    samples: list[Sample] = []
    for image, label in zip(images, labels.tolist(), strict=True):
        png = draw_like_canvas(image)
        if predict_image(model, png, top_k=1).digit == label:
            samples.append(Sample(label, png))
            if len(samples) == count:
                break
    return samples


def phone_photo_jpeg(digit: torch.Tensor | Image.Image, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12-megapixel JPEG, as a phone takes it: an MNIST digit (uint8 [28, 28]), or a picture of
    dark writing on light paper (a number, say), written large on grey-white paper, in the
    middle, as large as fits in half the photo's height and two thirds of its width."""
    ink = Image.fromarray(255 - digit.numpy()) if isinstance(digit, torch.Tensor) else digit.convert("L")
    scale = min(size[0] * 2 // 3 / ink.width, size[1] // 2 / ink.height)
    ink = ink.resize((round(ink.width * scale), round(ink.height * scale)), Image.Resampling.BILINEAR)
    photo = Image.new("L", size, 235)
    corner = ((size[0] - ink.width) // 2, (size[1] - ink.height) // 2)
    photo.paste(ink.point(lambda v: 235 * v // 255), corner)
    buffer = io.BytesIO()
    photo.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class NumberPhoto:
    """A 12-megapixel phone JPEG of a number, and the number."""

    number: str
    jpeg: bytes

    def multipart(self) -> tuple[bytes, str]:
        return encode_multipart({"image": ("number.jpg", self.jpeg, "image/jpeg")})


def number_photos(reader: nn.Module, mnist: MNIST, count: int = 8) -> list[NumberPhoto]:
    """``count`` phone photos of 2-6 digit numbers of MNIST test digits, separate and touching
    in turn, that ``reader`` reads right in-process (so each answer can be checked)."""
    from ..read import read_number
    from .numbers import number_pictures

    photos: list[NumberPhoto] = []
    kinds = [number_pictures(mnist, 4 * count, seed=12, touching=touching) for touching in (False, True)]
    for picture in (p for pair in zip(*kinds, strict=True) for p in pair):
        jpeg = phone_photo_jpeg(Image.open(io.BytesIO(picture.data)))
        if read_number(jpeg, reader, "sequence").number == picture.number:
            photos.append(NumberPhoto(picture.number, jpeg))
            if len(photos) == count:
                break
    return photos


def _single_client_ms(url: str, path: str, body: bytes, content_type: str,
                      right: Callable[[dict[str, Any]], bool], name: str, repeats: int = 30,
                      timeout: float = 30.0) -> float:
    """Median milliseconds per request, one client posting ``body`` to ``path`` on one
    keep-alive connection ``repeats`` times (after two to warm up); every answer checked."""
    host, port = parse_url(url)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    times = []
    try:
        for _ in range(repeats + 2):
            start = time.perf_counter()
            connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            answer = response.read()
            times.append((time.perf_counter() - start) * 1000)
            if response.status != 200 or not right(json.loads(answer)):
                raise LoadTestError(f"{name}: the server answered {response.status} {answer[:120]!r}")
    except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: an answer not JSON
        raise LoadTestError(f"single-client requests to {url} failed: {err}") from None
    finally:
        connection.close()
    return statistics.median(times[2:])


def single_client_latency(url: str, digit: torch.Tensor, label: int, model: str = "medium",
                          repeats: int = 30, timeout: float = 30.0) -> dict[str, float]:
    """Median milliseconds per request, one client on one keep-alive connection, for a
    560x560 canvas PNG and for a 12-megapixel phone JPEG of the same digit (multipart)."""
    pictures = {"canvas_png_560": (draw_like_canvas(digit, 560), "image/png"),
                "phone_jpeg_12mp": (phone_photo_jpeg(digit), "image/jpeg")}
    medians = {}
    for name, (picture, mimetype) in pictures.items():
        body, content_type = encode_multipart({"model": model, "image": (name, picture, mimetype)})
        medians[name] = _single_client_ms(url, "/api/predict", body, content_type,
                                          lambda answer: answer.get("digit") == label, name, repeats, timeout)
    return medians


def single_client_read_ms(url: str, photo: NumberPhoto, repeats: int = 30, timeout: float = 30.0) -> float:
    """Median milliseconds for one client alone to have a phone photo of a number read at
    ``/api/read`` (multipart, keep-alive); every answer checked."""
    body, content_type = photo.multipart()
    return _single_client_ms(url, "/api/read", body, content_type,
                             lambda answer: answer.get("number") == photo.number, "/api/read",
                             repeats, timeout)


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value below which q% of the observations fall)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))  # ceil without floats
    return ordered[int(rank) - 1]


_SINGLE_NAMES = {"canvas_png_560": "560x560 canvas PNG", "phone_jpeg_12mp": "12 MP phone JPEG",
                 "number_jpeg_12mp": "12 MP phone JPEG of a number to `/api/read`"}


@dataclass
class LoadResult:
    """What a load test measured; ``errors`` and ``wrong`` must both be 0 for a pass."""

    url: str
    model: str
    clients: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # transport failures and non-200 answers
    wrong: int = 0  # 200 answers with another digit (or model) than the input's
    examples: list[str] = field(default_factory=list)  # the first few problems, for the report
    peak_rss_kib: int | None = None
    # Of a server the test started (None for one given by URL): waitress threads, and torch
    # threads as the server itself announced them, with where that number came from.
    server_threads: int | None = None
    torch_threads: int | None = None
    torch_threads_from: str = ""
    load_before: tuple[float, ...] = ()  # the machine's load average as the test began
    single_client_ms: dict[str, float] = field(default_factory=dict)  # see single_client_latency
    engine: str = ""  # what the server said its models run on
    options: dict[str, Any] = field(default_factory=dict)  # of load_test(), as command-line options
    # Clients posting phone photos of numbers to /api/read beside the drawings, their latencies,
    # and the drawings' median in a round just before without them (load_test's readers).
    readers: int = 0
    read_latencies_ms: list[float] = field(default_factory=list)
    alone_median_ms: float | None = None
    # The shipped weights files a server the test started ran (model name -> SHA-256).
    weights_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + len(self.read_latencies_ms) + self.errors

    @property
    def ok(self) -> bool:
        return (self.errors == 0 and self.wrong == 0 and bool(self.latencies_ms)
                and (self.readers == 0 or bool(self.read_latencies_ms)))

    @property
    def read_median_ms(self) -> float:
        return statistics.median(self.read_latencies_ms) if self.read_latencies_ms else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return _percentile(self.latencies_ms, 99)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s else 0.0

    def summary(self) -> str:
        rss = f"{self.peak_rss_kib / 1024:.0f} MiB" if self.peak_rss_kib else "unknown"
        readers = ""
        if self.readers:
            alone = f"{self.alone_median_ms:.1f} ms" if self.alone_median_ms is not None else "not measured"
            more = f"{self.readers} more client{'' if self.readers == 1 else 's'}"
            readers = (f"; {len(self.read_latencies_ms)} numbers read by {more}, median "
                       f"{self.read_median_ms:.1f} ms; drawings without them: median {alone}")
        return (f"{self.requests} requests from {self.clients} clients in {self.duration_s:.1f} s "
                f"({self.throughput:.1f}/s): {self.errors} errors, {self.wrong} wrong answers; latency "
                f"median {self.median_ms:.1f} ms, p99 {self.p99_ms:.1f} ms{readers}; server peak RSS {rss}")

    def command_line(self, output: str | os.PathLike | None = None) -> str:
        """The test as one canonical ``tinydigits loadtest`` line, whichever entry point ran it."""
        return tinydigits_line("loadtest", {**self.options, "output": output and str(output)})

    def to_markdown(self, output: str | os.PathLike | None = None) -> str:
        command = self.command_line(output) if self.options else ""
        rss = (f"{self.peak_rss_kib / 1024:.1f} MiB ({self.peak_rss_kib:,} KiB)" if self.peak_rss_kib
               else "unknown")
        before = ", ".join(f"{x:.2f}" for x in self.load_before) or "unknown"
        after = ", ".join(f"{x:.2f}" for x in load_average() or ()) or "unknown"
        if self.server_threads is None:
            server = "a server the test did not start, its threads and memory unknown"
        else:
            torch_threads = "unknown" if self.torch_threads is None else str(self.torch_threads)
            source = f" ({self.torch_threads_from})" if self.torch_threads_from else ""
            waitress = f"{self.server_threads} waitress thread{'' if self.server_threads == 1 else 's'}"
            torch_threads += f" torch thread{'' if self.torch_threads == 1 else 's'}"
            server = (f"server with {waitress} and {torch_threads}{source}, "
                      f"models on {self.engine or 'an engine it did not name'}")
        rows = [
            ("clients (concurrent, each one request at a time)", str(self.clients)),
            ("duration", f"{self.duration_s:.1f} s"),
            ("model", self.model),
            ("requests answered", f"{len(self.latencies_ms):,}"),
            ("errors (transport or non-200)", str(self.errors)),
            ("wrong answers", str(self.wrong)),
            ("throughput", f"{self.throughput:.1f} requests/s"),
            ("latency, median", f"{self.median_ms:.1f} ms"),
            ("latency, 99th percentile", f"{self.p99_ms:.1f} ms"),
            ("server peak memory (VmHWM)", rss),
            *[(f"one client alone, {_SINGLE_NAMES[name]}: latency, median", f"{ms:.1f} ms")
              for name, ms in self.single_client_ms.items()],
        ]
        if self.readers:
            alone = self.alone_median_ms
            rows += [
                ("more clients reading 12 MP photos of numbers (`/api/read`)", str(self.readers)),
                ("numbers read right", f"{len(self.read_latencies_ms):,}"),
                ("`/api/read` latency, median", f"{self.read_median_ms:.1f} ms"),
                ("drawings' latency, median, in the round before without the readers",
                 f"{alone:.1f} ms" if alone is not None else "not measured"),
                ("drawings' median beside the readers / without",
                 f"{self.median_ms / alone:.2f}x" if alone else "not measured"),
            ]
        lines = ["# Load test of `tinydigits serve`", ""]
        if command:
            lines += ["Produced by:", "", "```bash", command, "```", ""]
        lines += [
            f"Each client posts, one after the other, PNGs of MNIST test digits drawn dark on white "
            f"(112x112, like the page's canvas), alternating multipart and JSON data-URL bodies, to "
            f"`POST /api/predict` on {self.url}; only digits the model reads correctly in-process are "
            f"used, and every answer is checked against the digit sent. Latency is measured by the "
            f"client, from sending the request to the end of the answer. Before the load, one client "
            f"alone sends a 560x560 canvas PNG and a 12-megapixel phone JPEG of a digit (multipart, "
            f"keep-alive) 30 times each{', and one of a number to `/api/read`' if self.readers else ''}.",
            *([f"Then the same clients post drawings again for as long while {self.readers} more post "
               f"12-megapixel phone JPEGs of 2-6 digit numbers (MNIST test digits, separate and touching "
               f"in turn, each one the reader reads right in-process) to `POST /api/read`, each answer "
               f"checked against the number; the load figures below are of that round."]
              if self.readers else []),
            "",
            *markdown_table(("measure", "value"), rows, left=1),
            "",
            f"Machine: {os.cpu_count()} CPUs ({cpu_name()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}), shared by the server, the clients and whatever else runs "
            f"(load average before the run {before}, after it {after}); {server}; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
            *(["", "Weights (SHA-256): " + ", ".join(f"`{name}` {digest}"
                                                      for name, digest in self.weights_sha256.items()) + "."]
              if self.weights_sha256 else []),
        ]
        if self.examples:
            lines += ["", "First problems:", "", *[f"- {e}" for e in self.examples]]
        return "\n".join(lines) + "\n"


def run_load(url: str, samples: Sequence[Sample], *, clients: int = 20, duration: float = 20.0,
             model: str = "medium", timeout: float = 30.0, readers: int = 0,
             photos: Sequence[NumberPhoto] = ()) -> LoadResult:
    """``clients`` threads, each with its own keep-alive connection, post samples to
    ``url``/api/predict back to back for ``duration`` seconds, and ``readers`` more post
    ``photos`` to ``url``/api/read meanwhile; every answer is checked."""
    if not samples:
        raise LoadTestError("no samples to send")
    if readers and not photos:
        raise LoadTestError("no photos of numbers for the readers to send")
    host, port = parse_url(url)
    result = LoadResult(url, model, clients, duration, load_before=load_average() or (), readers=readers)
    lock = threading.Lock()
    start = threading.Barrier(clients + readers + 1)
    deadline = 0.0

    def problem(text: str, wrong: bool = False) -> None:
        with lock:
            if wrong:
                result.wrong += 1
            else:
                result.errors += 1
            if len(result.examples) < 5:
                result.examples.append(text)

    def drawing(n: int) -> Request:
        sample = samples[n % len(samples)]
        # Both request forms, so both parsing paths are under load.
        body, kind = sample.multipart(model) if n % 2 == 0 else sample.json(model)

        def check(answer: dict[str, Any]) -> str | None:
            digit, answered_model = answer["digit"], answer["model"]
            if digit != sample.label or answered_model != model:
                return f"sent a {sample.label}, got {digit} from {answered_model}"
            return None

        return "/api/predict", body, kind, check

    def number(n: int) -> Request:
        photo = photos[n % len(photos)]
        body, kind = photo.multipart()

        def check(answer: dict[str, Any]) -> str | None:
            read = answer["number"]
            return None if read == photo.number else f"sent {photo.number}, read {read}"

        return "/api/read", body, kind, check

    def client(index: int, request: Callable[[int], Request], stride: int, record: list[float]) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        latencies: list[float] = []
        start.wait()
        n = index
        while time.perf_counter() < deadline:
            path, body, kind, check = request(n)
            n += stride
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": kind})
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as err:
                problem(f"client {index}: {type(err).__name__}: {err}")
                connection.close()  # reconnect on the next request
                continue
            elapsed = (time.perf_counter() - sent) * 1000
            if response.status != 200:
                problem(f"client {index}: HTTP {response.status}: {payload[:200]!r}")
                continue
            latencies.append(elapsed)
            try:
                wrong = check(json.loads(payload))
            except (ValueError, KeyError, TypeError):
                problem(f"client {index}: not the documented JSON: {payload[:200]!r}", wrong=True)
                continue
            if wrong:
                problem(f"client {index}: {wrong}", wrong=True)
        connection.close()
        with lock:
            record.extend(latencies)

    threads = [threading.Thread(target=client, args=(i, drawing, clients, result.latencies_ms), daemon=True)
               for i in range(clients)]
    threads += [threading.Thread(target=client, args=(clients + i, number, readers, result.read_latencies_ms),
                                 daemon=True) for i in range(readers)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + duration
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    result.duration_s = time.perf_counter() - began  # includes the last requests' tails
    return result


class ServerProcess:
    """``python -m tinydigits serve`` on a free loopback port in a subprocess; a context manager.

    Stopped with SIGINT (as Ctrl-C) on exit; ``peak_rss_kib()`` reads its VmHWM meanwhile. A
    server that exits or stays silent instead of announcing its URL raises :class:`LoadTestError`
    with its last line of output (at once when it exits; after ``startup_timeout`` seconds else)."""

    def __init__(self, models: Sequence[str] = ("medium",), *, server_threads: int = 4,
                 torch_threads: int | None = None, startup_timeout: float = 60.0) -> None:
        self.command = python_module_argv("tinydigits", ["serve"], {
            "host": "127.0.0.1", "port": 0, "server_threads": server_threads, "models": list(models),
            "threads": torch_threads})
        self.server_threads = server_threads
        self.startup_timeout = startup_timeout
        self.url = ""
        self.torch_threads: int | None = None  # as the server announced them
        self.engine = ""  # what the models run on, as the server announced it
        self.process: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)  # for failure reports
        self._stdout: collections.deque[str] = collections.deque(maxlen=20)  # before the URL
        self._stderr_reader: threading.Thread | None = None

    def __enter__(self) -> ServerProcess:
        process = self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        # Both pipes are drained for the server's whole life, so it never blocks on a full one
        # (waitress warns on stderr when its queue builds up).
        def drain_stdout() -> None:
            for line in process.stdout:
                lines.put(line)
            lines.put(None)  # end of output: the server has exited (or closed its stdout)

        threading.Thread(target=drain_stdout, daemon=True).start()
        self._stderr_reader = threading.Thread(target=lambda: self._stderr.extend(process.stderr),
                                               daemon=True)
        self._stderr_reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._fail(f"the server did not announce its URL within {self.startup_timeout:g} s")
            if line is None:
                self._fail("the server stopped before it started serving")
            urls = [word for word in line.split() if word.startswith("http://")]
            if urls:
                break
            self._stdout.append(line)
        self.url = urls[0]
        threads = re.search(r"\b(\d+) torch threads?\b", line)
        self.torch_threads = int(threads.group(1)) if threads else None
        engine = re.search(r"models on ([\w, ]+);", line)
        self.engine = engine.group(1) if engine else ""
        return self

    def _fail(self, what: str) -> NoReturn:
        """Stop the server and raise a one-line error with its last line of output."""
        self.__exit__(None, None, None)
        if self._stderr_reader is not None:
            self._stderr_reader.join(timeout=5)  # the pipe closes when the process has gone
        output = [line.strip() for line in (*self._stderr, *self._stdout) if line.strip()]
        last = output[-1][:300] if output else "no output"
        code = self.process.returncode if self.process else None
        status = f" (exit status {code})" if code is not None else ""
        raise LoadTestError(f"{what}{status}: {last}")

    def peak_rss_kib(self) -> int | None:
        return peak_rss_kib(self.process.pid) if self.process else None

    def stderr(self) -> str:
        return "".join(self._stderr)

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def load_test(*, clients: int = 20, duration: float = 20.0, model: str = "medium", count: int = 200,
              server_threads: int = 4, torch_threads: int | None = None, url: str | None = None,
              data_dir: str | os.PathLike | None = None, readers: int = 0) -> LoadResult:
    """The whole test: pick samples, start a server (unless ``url`` is given), load it, read its
    peak memory, stop it. With ``readers``, a first round of the drawings alone, then one with
    that many more clients reading phone photos of numbers."""
    if url is not None:
        parse_url(url)  # a bad URL fails before the samples are made
    mnist = load_mnist(data_dir)
    samples = drawn_samples(load_model(model, pretrained=True), mnist.test_images, mnist.test_labels, count)
    photos = number_photos(load_model(DEFAULT_READER, pretrained=True), mnist) if readers else []
    server = ServerProcess([model], server_threads=server_threads, torch_threads=torch_threads) \
        if url is None else None
    with server or contextlib.nullcontext():
        target = url or server.url
        single = single_client_latency(target, mnist.test_images[0], int(mnist.test_labels[0]), model)
        if readers:
            single["number_jpeg_12mp"] = single_client_read_ms(target, photos[0])
        alone = (run_load(target, samples, clients=clients, duration=duration, model=model)
                 if readers else None)
        result = run_load(target, samples, clients=clients, duration=duration, model=model, readers=readers,
                          photos=photos)
        result.single_client_ms = single
        if alone is not None:  # its problems count too
            result.alone_median_ms = alone.median_ms
            result.errors, result.wrong = result.errors + alone.errors, result.wrong + alone.wrong
            result.examples = (alone.examples + result.examples)[:5]
        if server is not None:
            result.peak_rss_kib = server.peak_rss_kib()
            result.server_threads = server_threads
            result.torch_threads = server.torch_threads
            result.engine = server.engine
            result.weights_sha256 = {name: get_weights(name).sha256
                                     for name in (model, *([DEFAULT_READER] if readers else []))}
            result.torch_threads_from = (
                "--threads" if torch_threads is not None
                else "$TINYDIGITS_THREADS" if os.environ.get("TINYDIGITS_THREADS") else "torch's default")
    result.options = {"clients": clients, "duration": f"{duration:g}", "model": model, "samples": count,
                      "readers": readers or None, "server_threads": server_threads, "url": url,
                      "threads": torch_threads}
    return result
