"""A bounded load test of `tinydigits serve` on 127.0.0.1: 20 concurrent clients posting
drawn MNIST digits, zero errors and every answer right; the checker itself is checked, and
the `tinydigits loadtest` command writes its report."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from web_helpers import shipped_models

from tinydigits.cli import main
from tinydigits.loadtest import Sample, ServerProcess, drawn_samples, run_load
from tinydigits.predict import predict_image

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
    report = result.to_markdown("tinydigits loadtest --duration 5")
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


def test_loadtest_command_writes_the_report(tmp_path):
    report = tmp_path / "LOADTEST.md"
    result = CliRunner().invoke(main, ["loadtest", "--clients", "3", "--duration", "1", "--samples", "20",
                                       "--server-threads", "2", "-o", str(report)])
    assert result.exit_code == 0, result.output + result.stderr
    assert re.search(r"0 errors, 0 wrong answers; latency median [\d.]+ ms, p99 [\d.]+ ms; server peak RSS "
                     r"\d+ MiB", result.output)
    text = report.read_text()
    assert text.startswith("# Load test of `tinydigits serve`")
    assert f"tinydigits loadtest --clients 3 --duration 1 --model medium --samples 20 --server-threads 2 " \
           f"-o {report}" in text
