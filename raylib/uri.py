"""Reading and writing under a location: a local path or any ``pyarrow.fs`` URI
(``file://``, ``s3://``, ``gs://``). Every byte a job, the store or the simulator writes
goes through here, so a job whose ``--out`` is ``s3://bucket/run`` leaves nothing on the
local disk outside temporary directories.

Tables are directories of Parquet files (``<root>/<table>/part-*.parquet``).
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from raylib.errors import UserError


def is_uri(location: str) -> bool:
    return "://" in location


def absolute(location: str) -> str:
    """A local path made absolute (processes on other nodes or in other working
    directories read it); a URI unchanged."""
    return location if is_uri(location) else os.path.abspath(location)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs`` filesystem and the path of ``location`` in it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URI alike; a URI's query (e.g.
    ``?endpoint_override=...``) stays at the end."""
    base, mark, query = root.partition("?") if is_uri(root) else (root, "", "")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + mark + query


def kind(location: str) -> pafs.FileType:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type


def exists(location: str) -> bool:
    return kind(location) != pafs.FileType.NotFound


def delete_dir(location: str) -> None:
    """Remove the directory ``location`` and everything under it, if it exists."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def write_bytes(location: str, data: bytes) -> str:
    """Write ``data`` to the file ``location`` (its directory is created); returns it.
    Readers see the old file or the new one, never a part: an object store's single PUT
    is atomic, and a local file is written beside its target and renamed over it."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{path}.tmp-{uuid.uuid4().hex}" if local else path
    with fs.open_output_stream(target) as f:
        f.write(data)
    if local:
        fs.move(target, path)
    return location


def create_exclusive(location: str, data: bytes) -> bool:
    """Create the file ``location`` holding ``data`` only if it does not exist yet: True when
    this call created it, False when it was already there. Of concurrent callers exactly
    one gets True: a local file is opened with O_EXCL; an S3 object is PUT with
    ``If-None-Match: *`` (S3's conditional write, through boto3, at the endpoint the URI's
    ``endpoint_override``/``scheme`` or ``AWS_ENDPOINT_URL`` names). Other filesystems
    (pyarrow exposes no conditional write) raise NotImplementedError."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True
    if fs.type_name == "s3":
        return _s3_put_if_absent(location, fs, path, data)
    raise NotImplementedError(f"no conditional create on {fs.type_name} ({location})")


def _s3_put_if_absent(location: str, fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    import boto3
    from botocore.exceptions import ClientError

    query = parse_qs(urlsplit(location).query)
    override = query.get("endpoint_override", [None])[0]
    scheme = query.get("scheme", ["https"])[0]
    endpoint = f"{scheme}://{override}" if override else os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    bucket, key = path.split("/", 1)
    client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region", [fs.region])[0])
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


def write_text(location: str, text: str) -> str:
    return write_bytes(location, text.encode())


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(location: str):
    return json.loads(read_bytes(location))


def read_settings(location: str, what: str) -> dict:
    """The mapping in the YAML file at ``location`` (a path or a URI: a job submitted to a
    cluster reads its settings from the bucket); a one-line UserError naming ``what`` when
    it cannot be read, is not YAML or does not hold a mapping. An empty file is ``{}``."""
    try:
        data = yaml.safe_load(read_bytes(location)) or {}
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {what} {location}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {location} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {location} must hold a mapping of settings")
    return data


def parquet_files(root: str, name: str) -> tuple[pafs.FileSystem, list[str], list[tuple[str, str]]]:
    """The files of table ``name`` under ``root`` split by whether their Parquet footer
    reads: ``(fs, readable paths, [(unreadable path, reason), ...])``. Hidden files (``.``
    or ``_`` prefixed, e.g. a writer's temporary file) are skipped as Parquet readers skip
    them. A footer check catches garbage and truncated files (a corrupt page inside a file
    with a sound footer still fails the read itself). FileNotFoundError without the table."""
    fs, path = filesystem(join(root, name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no table {name!r} under {root}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    good, bad = [], []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            continue
        try:
            with fs.open_input_file(info.path) as f:
                pq.read_metadata(f)
            good.append(info.path)
        except (pa.ArrowInvalid, OSError) as exc:
            bad.append((info.path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return fs, good, bad


def read_table(root: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """Table ``name`` (a directory of Parquet files) under ``root``; FileNotFoundError
    when there is none, or when its directory holds no Parquet file yet (a writer's first
    file still under its hidden temporary name: such a directory has no schema to read)."""
    fs, path = filesystem(join(root, name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no table {name!r} under {root}")
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    if not dataset.files:
        raise FileNotFoundError(f"table {name!r} under {root} has no Parquet file yet")
    return dataset.to_table(columns=columns)


def write_table(table: pa.Table, root: str, name: str, part: int | str = 0) -> str:
    """Write ``table`` as one part of table ``name`` under ``root`` and return the file:
    ``part-00003.parquet`` for a number, ``part-<part>.parquet`` for a name."""
    fs, path = filesystem(join(root, name))
    fs.create_dir(path, recursive=True)
    suffix = f"{part:05d}" if isinstance(part, int) else part
    file = f"{path}/part-{suffix}.parquet"
    pq.write_table(table, file, filesystem=fs)
    return file
