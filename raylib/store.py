"""Versioned artifacts (rewrite tables, models, embeddings): publish atomically, load, roll back.

Layout under ``root`` (a local path or any ``pyarrow.fs`` URI: ``file://``, ``s3://``, ``gs://``)::

    <name>/v000001/_manifest.json   name, version, created_at, metadata, {key: file, kind}
    <name>/v000001/<key>.parquet    a pa.Table      (.json: a dict, .bin: raw bytes)
    <name>/LATEST                   the version id that ``load(name)`` returns
    <name>/ENABLED                  feature flag, "true" / "false" (absent: enabled)
    <name>/.tmp-<uuid>/             a publish in flight, or left by a crash: never read, safe to delete

Atomicity. ``publish`` writes every file of the new version, the manifest last, under a
temporary directory, then moves it to its version id, then flips ``LATEST`` (written to a
temporary file, then moved over the old pointer). A version exists for ``versions`` and
``load`` only when its directory holds a manifest, and ``latest`` is whatever ``LATEST``
names, so a crash at any point before the flip leaves the previous version as latest and
no half version visible (the flip is the commit point; tests/test_store.py kills a publish
at every step):

- on a local filesystem the directory move is one ``rename(2)``: the complete version
  appears at once or not at all;
- object stores (S3, GCS) have no atomic rename: a "move" copies objects one by one. Here
  the files are moved one at a time with the manifest LAST, so the version directory is
  only recognised (and only referenced by ``LATEST``) after it is complete; a crash mid-move
  leaves a directory without a manifest, which is ignored, and its version id is skipped
  by later publishes. The pointer itself is one object, and a single PUT is atomic.

Concurrent publishers. Each version number is claimed before it is written: the publisher
creates ``<name>/.claims/<version>`` with a conditional create (``raylib.uri.create_exclusive``:
O_EXCL on a local disk, S3's ``If-None-Match: *``), and of two publishers that pick the same
number only one succeeds; the other takes the next number. So concurrent publishers never
write into the same version and no version is ever overwritten. A claim whose publish
crashed leaves its number unused. On a filesystem without a conditional create (GCS
through pyarrow, or an explicit ``filesystem``) the claim is a check-then-write and one
publisher per artifact at a time is the operator's job. Readers may run concurrently with
any publish.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib.errors import UserError
from raylib import uri

LATEST = "LATEST"
ENABLED = "ENABLED"
CLAIMS = ".claims"
MANIFEST = "_manifest.json"
_VERSION = re.compile(r"v(\d{6,})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SUFFIX = {"table": ".parquet", "json": ".json", "bytes": ".bin"}


class ArtifactNotFound(UserError, KeyError):
    """An artifact name or version that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Artifact:
    """One published version: its metadata and lazily read files."""

    name: str
    version: str
    created_at: str
    metadata: dict
    files: dict[str, dict] = field(repr=False)  # key -> {"file": name, "kind": table|json|bytes}
    directory: str = field(repr=False)
    fs: pafs.FileSystem = field(repr=False)

    def keys(self) -> list[str]:
        return list(self.files)

    def table(self, key: str) -> pa.Table:
        return pq.read_table(self._path(key, "table"), filesystem=self.fs)

    def json(self, key: str) -> dict:
        self._path(key, "json")
        return json.loads(self.bytes(key))

    def bytes(self, key: str) -> bytes:
        """The stored bytes of any key (a ``bytes`` value as given, a table as Parquet)."""
        with self.fs.open_input_stream(self._path(key)) as f:
            return f.read()

    def _kind(self, key: str) -> str:
        if key not in self.files:
            raise ArtifactNotFound(
                f"artifact {self.name!r} version {self.version} has no file {key!r} (has: {', '.join(self.files)})"
            )
        return self.files[key]["kind"]

    def _path(self, key: str, kind: str | None = None) -> str:
        found = self._kind(key)
        if kind is not None and found != kind:
            raise TypeError(f"file {key!r} of artifact {self.name!r} is {found}, not {kind}")
        return f"{self.directory}/{self.files[key]['file']}"


class Store:
    """Versioned artifacts under ``root``; see the module docstring for layout and atomicity.

    ``filesystem``: an explicit ``pyarrow.fs.FileSystem`` in which ``root`` is a path
    (otherwise ``root`` is resolved with ``raylib.uri.filesystem``).
    """

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None):
        self.root = root
        self.fs, base = uri.filesystem(root) if filesystem is None else (filesystem, root)
        self.base = base.rstrip("/")
        self._conditional = filesystem is None  # root is a location raylib.uri can create exclusively

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ---- writing --------------------------------------------------------------------------

    def publish(self, name: str, files: dict[str, pa.Table | dict | bytes], metadata: dict | None = None) -> str:
        """Write ``files`` (tables as Parquet, dicts as JSON, bytes raw) as the next version
        of ``name`` and make it latest, atomically. Returns the new version id."""
        kinds = {key: _kind_of(key, value) for key, value in files.items()}
        directory = self._dir(name)
        self.fs.create_dir(directory, recursive=True)
        version = self._claim_next(name)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}"
        self.fs.create_dir(tmp)
        try:
            manifest = {
                "name": name,
                "version": version,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "metadata": metadata or {},
                "files": {key: {"file": key + _SUFFIX[kind], "kind": kind} for key, kind in kinds.items()},
            }
            for key, value in files.items():
                self._write_file(f"{tmp}/{manifest['files'][key]['file']}", value)
            self._write_file(f"{tmp}/{MANIFEST}", manifest)
            self._commit(tmp, f"{directory}/{version}")
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_dir(tmp)
            raise
        self._write_pointer(f"{directory}/{LATEST}", version)
        return version

    def rollback(self, name: str, to: str | None = None) -> str:
        """Point latest at version ``to`` (default: the version before the current latest);
        returns it. Everything that serves "latest" follows the pointer."""
        current = self.latest(name)
        if current is None:
            raise ArtifactNotFound(f"no artifact {name!r} in {self.root}")
        versions = self.versions(name)
        if to is None:
            position = versions.index(current)
            if position == 0:
                raise UserError(f"cannot roll back artifact {name!r}: {current} is its oldest version")
            to = versions[position - 1]
        elif to not in versions:
            raise ArtifactNotFound(f"artifact {name!r} has no version {to!r} in {self.root} (versions: {', '.join(versions)})")
        self._write_pointer(f"{self._dir(name)}/{LATEST}", to)
        return to

    def set_enabled(self, name: str, flag: bool) -> None:
        """Turn the feature flag of artifact ``name`` on or off (serving reads ``enabled``)."""
        self.fs.create_dir(self._dir(name), recursive=True)
        self._write_pointer(f"{self._dir(name)}/{ENABLED}", "true" if flag else "false")

    # ---- reading --------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The artifact names under the root."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and _NAME.fullmatch(i.base_name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest to newest ([] for an unknown name)."""
        candidates = sorted(self._listing(name), key=_version_number)
        manifests = self.fs.get_file_info([f"{self._dir(name)}/{v}/{MANIFEST}" for v in candidates])
        return [v for v, info in zip(candidates, manifests) if info.type == pafs.FileType.File]

    def latest(self, name: str) -> str | None:
        """The version ``load(name)`` returns, or None when nothing was published."""
        return self._read_text(f"{self._dir(name)}/{LATEST}")

    def enabled(self, name: str) -> bool:
        return self._read_text(f"{self._dir(name)}/{ENABLED}") != "false"

    def load(self, name: str, version: str = "latest") -> Artifact:
        """Version ``version`` (default: latest) of artifact ``name``."""
        if version == "latest":
            version = self.latest(name)
            if version is None:
                raise ArtifactNotFound(f"no artifact {name!r} in {self.root}")
        directory = f"{self._dir(name)}/{version}"
        text = self._read_text(f"{directory}/{MANIFEST}") if _VERSION.fullmatch(version) else None
        if text is None:
            known = ", ".join(self.versions(name)) or "none"
            raise ArtifactNotFound(f"artifact {name!r} has no version {version!r} in {self.root} (versions: {known})")
        manifest = json.loads(text)
        return Artifact(
            name=name,
            version=version,
            created_at=manifest["created_at"],
            metadata=manifest["metadata"],
            files=manifest["files"],
            directory=directory,
            fs=self.fs,
        )

    # ---- helpers --------------------------------------------------------------------------

    def _dir(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"invalid artifact name {name!r}: use letters, digits, '_', '-', '.'")
        return f"{self.base}/{name}"

    def _listing(self, name: str) -> list[str]:
        """Every version directory of ``name``, complete or not."""
        selector = pafs.FileSelector(self._dir(name), allow_not_found=True)
        return [
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and _VERSION.fullmatch(info.base_name)
        ]

    def _claim_next(self, name: str) -> str:
        """Claim the first version number above every version and claim of ``name``."""
        claimed = pafs.FileSelector(f"{self._dir(name)}/{CLAIMS}", allow_not_found=True)
        taken = self._listing(name) + [i.base_name for i in self.fs.get_file_info(claimed)
                                        if _VERSION.fullmatch(i.base_name)]
        number = 1 + max((_version_number(v) for v in taken), default=0)
        while not self._claim(name, _version_id(number)):
            number += 1
        return _version_id(number)

    def _claim(self, name: str, version: str) -> bool:
        """Create the claim of ``version``; False when another publisher holds it."""
        owner = json.dumps({"pid": os.getpid(), "id": uuid.uuid4().hex}).encode()
        if self._conditional:
            with contextlib.suppress(NotImplementedError):
                return uri.create_exclusive(uri.join(self.root, name, CLAIMS, version), owner)
        path = f"{self._dir(name)}/{CLAIMS}/{version}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        self.fs.create_dir(f"{self._dir(name)}/{CLAIMS}", recursive=True)
        self._write_file(path, owner)
        return True

    def _write_file(self, path: str, value: pa.Table | dict | bytes) -> None:
        if isinstance(value, pa.Table):
            pq.write_table(value, path, filesystem=self.fs)
            return
        data = json.dumps(value, indent=1, sort_keys=True).encode() if isinstance(value, dict) else bytes(value)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _commit(self, tmp: str, final: str) -> None:
        """Move a complete version directory to its final name (see module docstring)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(tmp, final)
            return
        self.fs.create_dir(final)
        names = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(tmp))]
        for base in sorted(names, key=lambda b: b == MANIFEST):  # the manifest last
            self.fs.move(f"{tmp}/{base}", f"{final}/{base}")
        self.fs.delete_dir(tmp)

    def _write_pointer(self, path: str, text: str) -> None:
        """Replace a small file atomically: write a temporary file, then move it over."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self._write_file(tmp, text.encode())
        self.fs.move(tmp, path)

    def _read_text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode().strip()
        except FileNotFoundError:
            return None


def _kind_of(key: str, value: object) -> str:
    if not isinstance(key, str) or not _NAME.fullmatch(key):
        raise ValueError(f"invalid file key {key!r}: use letters, digits, '_', '-', '.'")
    if isinstance(value, pa.Table):
        return "table"
    if isinstance(value, dict):
        return "json"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    raise TypeError(f"file {key!r}: expected pa.Table, dict or bytes, got {type(value).__name__}")


def _version_id(number: int) -> str:
    return f"v{number:06d}"


def _version_number(version: str) -> int:
    return int(_VERSION.fullmatch(version).group(1))
