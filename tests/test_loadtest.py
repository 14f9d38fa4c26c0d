"""A bounded load test of `tinydigits serve` on 127.0.0.1: 20 concurrent clients posting
drawn MNIST digits, zero errors and every answer right; the checker itself is checked, and
the `tinydigits loadtest` command writes its report."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image
from web_helpers import shipped_models, shipped_reader

from tinydigits import TinyDigitsError
from tinydigits.cli import main
from tinydigits.lab.loadtest import (
    LoadResult,
    LoadTestError,
    NumberPhoto,
    Sample,
    ServerProcess,
    drawn_samples,
    number_photos,
    parse_url,
    run_load,
)
from tinydigits.models import DEFAULT_READER
from tinydigits.predict import predict_image
from tinydigits.runtime import cpu_name
from tinydigits.weights import get_weights

pytest.importorskip("flask")
pytest.importorskip("waitress")


@pytest.fixture(scope="module")
def samples(mnist):
    chosen = drawn_samples(shipped_models()["medium"], mnist.test_images[:300], mnist.test_labels[:300], 100)
    return chosen


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["medium"], server_threads=4) as running:
        yield running
    assert running.process.returncode == 0, running.stderr()  # stopped cleanly by SIGINT


def test_samples_are_drawn_digits_the_model_reads_right(samples, mnist):
    assert len(samples) == 100 and len({s.label for s in samples}) == 10
    model = shipped_models()["medium"]
    for sample in samples[:10]:
        assert sample.png.startswith(b"\x89PNG") and predict_image(model, sample.png).digit == sample.label


def test_twenty_clients_for_five_seconds_without_an_error(server, samples):
    result = run_load(server.url, samples, clients=20, duration=5.0)
    peak = server.peak_rss_kib()
    print(result.summary(), f"peak RSS {peak} KiB")
    assert result.errors == 0 and result.wrong == 0 and result.examples == [], result.examples
    assert result.ok and result.requests >= 40  # at least two answers per client
    assert 0 < result.median_ms <= result.p99_ms < 30_000
    assert peak is not None and 50_000 < peak < 2_000_000  # KiB: the server's VmHWM was read
    result.peak_rss_kib = peak
    report = result.to_markdown()
    assert "| errors (transport or non-200) | 0 |" in report and "| wrong answers | 0 |" in report
    assert re.search(r"\| latency, 99th percentile \| [\d.]+ ms \|", report)
    assert re.search(r"\| server peak memory \(VmHWM\) \| [\d.]+ MiB", report)


def test_the_checker_counts_wrong_answers_and_errors(server, samples):
    mislabelled = [Sample((s.label + 1) % 10, s.png) for s in samples[:5]]
    wrong = run_load(server.url, mislabelled, clients=2, duration=0.5)
    assert wrong.wrong == len(wrong.latencies_ms) > 0 and wrong.errors == 0 and not wrong.ok
    assert "sent a" in wrong.examples[0]
    broken = run_load(server.url, [Sample(3, b"not a picture")], clients=2, duration=0.5)
    assert broken.errors > 0 and broken.latencies_ms == [] and "HTTP 400" in broken.examples[0]
    other_model = run_load(server.url, samples[:5], clients=1, duration=0.3, model="small")
    assert other_model.errors > 0 and "HTTP 404" in other_model.examples[0]  # not served


@pytest.fixture(scope="module")
def photos(mnist):
    return number_photos(shipped_reader(), mnist, count=2)


def test_readers_post_phone_photos_of_numbers_beside_the_drawings(server, samples, photos):
    assert len(photos) == 2 and all(p.jpeg.startswith(b"\xff\xd8") and len(p.number) >= 2 for p in photos)
    assert Image.open(io.BytesIO(photos[0].jpeg)).size == (4032, 3024)
    result = run_load(server.url, samples, clients=2, duration=2.0, readers=2, photos=photos)
    assert result.ok and result.errors == 0 and result.wrong == 0, result.examples
    assert result.read_latencies_ms and result.latencies_ms  # both kinds answered, and right
    result.alone_median_ms = 10.0
    report = result.to_markdown()
    assert "| more clients reading 12 MP photos of numbers (`/api/read`) | 2 |" in report
    assert re.search(r"\| drawings' median beside the readers / without \| [\d.]+x \|", report)
    misread = run_load(server.url, samples[:2], clients=1, duration=1.0, readers=1,
                       photos=[NumberPhoto(photos[0].number + "1", photos[0].jpeg)])
    assert misread.wrong == len(misread.read_latencies_ms) > 0 and not misread.ok
    assert any("read " + photos[0].number in e for e in misread.examples)


def test_loadtest_command_writes_the_report(tmp_path):
    report = tmp_path / "LOADTEST.md"
    result = CliRunner().invoke(main, ["loadtest", "--clients", "3", "--duration", "1", "--samples", "20",
                                       "--readers", "1", "--server-threads", "2", "--threads", "1",
                                       "-o", str(report)])
    assert result.exit_code == 0, result.output + result.stderr
    assert re.search(r"0 errors, 0 wrong answers; latency median [\d.]+ ms, p99 [\d.]+ ms; \d+ numbers "
                     r"read by 1 more client, median [\d.]+ ms; drawings without them: median [\d.]+ ms; "
                     r"server peak RSS \d+ MiB", result.output)
    text = report.read_text()
    assert text.startswith("# Load test of `tinydigits serve`")
    assert f"tinydigits loadtest --clients 3 --duration 1 --model medium --samples 20 --readers 1 " \
           f"--server-threads 2 --threads 1 --output {report}" in text
    # A round of the drawings alone, then one beside a client reading phone photos of numbers.
    alone = r"\| drawings' latency, median, in the round before without the readers \| [\d.]+ ms"
    assert re.search(alone, text)
    assert re.search(r"\| `/api/read` latency, median \| [\d.]+ ms \|", text)
    assert re.search(r"\| one client alone, 12 MP phone JPEG of a number to `/api/read`: latency, median \| "
                     r"[\d.]+ ms \|", text)
    # The threads the server really ran with, as it announced them.
    engine = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    assert f"server with 2 waitress threads and 1 torch thread (--threads), models on {engine};" in text
    # Before the load, one client alone: a canvas-sized PNG and a phone photo, both read right.
    assert re.search(r"\| one client alone, 560x560 canvas PNG: latency, median \| [\d.]+ ms \|", text)
    assert re.search(r"\| one client alone, 12 MP phone JPEG: latency, median \| [\d.]+ ms \|", text)
    assert f"Machine: {os.cpu_count()} CPUs ({cpu_name()}, Python " in text  # the CPU the figures are of
    # The weights the server ran, so a report measured before a publish shows as stale.
    shipped = {name: get_weights(name).sha256 for name in ("medium", DEFAULT_READER)}
    assert f"Weights (SHA-256): `medium` {shipped['medium']}, `{DEFAULT_READER}` {shipped[DEFAULT_READER]}." \
        in text


def test_the_report_names_the_servers_real_threads():
    result = LoadResult("http://127.0.0.1:1", "medium", 1, 1.0, [5.0], server_threads=4, torch_threads=2,
                        torch_threads_from="torch's default")
    text = result.to_markdown()
    assert "server with 4 waitress threads and 2 torch threads (torch's default), models on an engine" in text
    one = LoadResult("http://127.0.0.1:1", "medium", 1, 1.0, [5.0], server_threads=1, torch_threads=1,
                     torch_threads_from="--threads").to_markdown()
    assert "server with 1 waitress thread and 1 torch thread (--threads), models on an engine" in one
    assert "TINYDIGITS_THREADS" not in text
    given = LoadResult("http://127.0.0.1:1", "medium", 1, 1.0, [5.0]).to_markdown()
    assert "a server the test did not start, its threads and memory unknown" in given


# ------------------------------------------------------------------ failures are one line


def test_urls_must_be_plain_http_with_host_and_port():
    assert parse_url("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_url("http://[::1]:8000/") == ("::1", 8000)
    assert parse_url("http://localhost") == ("localhost", 80)
    for url, message in [("localhost:8000", "not an http:// URL"), ("127.0.0.1", "not an http:// URL"),
                         ("https://127.0.0.1:8000", "plain HTTP only"), ("http://:8000", "not an http://"),
                         ("http://127.0.0.1:port", "not a valid port"), ("http://127.0.0.1:99999", "port"),
                         ("http://127.0.0.1:8000/demo", "give no path"), ("http://a@127.0.0.1:80", "user")]:
        with pytest.raises(LoadTestError, match=message) as info:
            parse_url(url)
        assert isinstance(info.value, TinyDigitsError) and "expected http://HOST:PORT" in str(info.value)
    with pytest.raises(LoadTestError, match="not an http:// URL"):
        run_load("localhost:8000", [Sample(7, b"")], clients=1, duration=0.1)


@pytest.mark.parametrize("url", ["localhost:8000", "https://127.0.0.1:8000", "http://127.0.0.1:8000/api"])
def test_loadtest_command_refuses_a_bad_url_in_one_line(url):
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["loadtest", "--url", url, "--duration", "0.1"])
    output = result.output.strip()  # stdout and stderr together
    assert result.exit_code == 1 and output.startswith("Error: ") and "\n" not in output, output
    assert "expected http://HOST:PORT" in output and "Traceback" not in output
    assert time.perf_counter() - started < 5  # before any sample is made


def test_a_server_that_exits_is_reported_at_once_with_its_last_line():
    started = time.perf_counter()
    with pytest.raises(LoadTestError) as info, ServerProcess(["nope"], startup_timeout=60):
        pass
    message = str(info.value)
    assert time.perf_counter() - started < 30  # not the startup timeout
    assert message.startswith("the server stopped before it started serving (exit status 2): Error: ")
    assert "'nope'" in message and "\n" not in message
    fake = ServerProcess(startup_timeout=60)
    fake.command = [sys.executable, "-c", "print('starting'); print('no model here'); raise SystemExit(3)"]
    with pytest.raises(LoadTestError, match=r"\(exit status 3\): no model here$"), fake:
        pass


def test_a_silent_server_is_reported_after_the_startup_timeout():
    silent = ServerProcess(startup_timeout=1)
    silent.command = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.perf_counter()
    with pytest.raises(LoadTestError, match="did not announce its URL within 1 s"), silent:
        pass
    assert time.perf_counter() - started < 20 and silent.process.poll() is not None  # and it was stopped
