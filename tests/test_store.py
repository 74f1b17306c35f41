"""raylib.store: round trips, version order, rollback, flags, and atomicity under real crashes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from raylib.errors import UserError
from raylib.store import ArtifactNotFound, Store

NAME = "rewrites"


def object_store_like() -> pafs.FileSystem:
    """Real files through a pyarrow filesystem that is not ``LocalFileSystem``: the store
    then takes its object-store path (file-by-file move, manifest last)."""
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file")))


def make_store(root: str, mode: str) -> Store:
    return Store(root, filesystem=object_store_like()) if mode == "fsspec" else Store(root)


def run_files(run: int) -> dict:
    """The files of publish number ``run`` (the crash script builds the same)."""
    return {"table": pa.table({"x": list(range(10 * run))}), "config": {"run": run}, "blob": bytes([run]) * 1000}


def assert_complete(store: Store, version: str) -> None:
    """Every file of ``version`` is there with the content its publish gave it."""
    art = store.load(NAME, version)
    run = art.metadata["run"]
    expected = run_files(run)
    assert sorted(art.keys()) == sorted(expected)
    assert art.table("table").equals(expected["table"])
    assert art.json("config") == expected["config"]
    assert art.bytes("blob") == expected["blob"]


def test_round_trip_of_tables_dicts_and_bytes(tmp_path):
    store = Store(str(tmp_path))
    table = pa.table(
        {
            "utterance": ["play maj and dragons", "thumbs down"],
            "score": [0.75, 0.5],
            "ts": pa.array([0, 1000], pa.timestamp("ms", tz="UTC")),
            "vec": [[1.0, 2.0], []],
        }
    )
    config = {"alpha": 0.1, "nested": {"k": [1, 2, 3]}, "name": "ünïcode"}
    blob = bytes(range(256)) * 10
    version = store.publish(NAME, {"table": table, "config": config, "model": blob}, metadata={"seed": 7})

    art = store.load(NAME)
    assert (art.name, art.version) == (NAME, version)
    assert art.metadata == {"seed": 7}
    assert sorted(art.keys()) == ["config", "model", "table"]
    assert art.table("table").equals(table)
    assert art.json("config") == config
    assert art.bytes("model") == blob
    created = dt.datetime.fromisoformat(art.created_at)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 3600


def test_wrong_key_or_kind_is_a_clear_error(tmp_path):
    store = Store(str(tmp_path))
    store.publish(NAME, {"table": pa.table({"a": [1]}), "config": {"a": 1}})
    art = store.load(NAME)
    with pytest.raises(KeyError, match="no file 'missing'"):
        art.table("missing")
    with pytest.raises(TypeError, match="is json, not table"):
        art.table("config")
    with pytest.raises(TypeError, match="is table, not json"):
        art.json("table")
    assert art.bytes("table")[:4] == b"PAR1"  # any key's stored bytes


def test_versions_are_ordered_and_old_ones_stay_loadable(tmp_path):
    store = Store(str(tmp_path))
    assert store.versions(NAME) == [] and store.latest(NAME) is None
    published = []
    for run in range(1, 12):
        published.append(store.publish(NAME, run_files(run), metadata={"run": run}))
        assert store.latest(NAME) == published[-1]
    assert published == sorted(published) and len(set(published)) == 11
    assert store.versions(NAME) == published
    for version in published:
        assert_complete(store, version)
    assert store.load(NAME, published[3]).metadata == {"run": 4}


def test_rollback_walks_back_and_publish_goes_on_after_the_newest(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(ArtifactNotFound, match=NAME):
        store.rollback(NAME)
    v1, v2, v3 = (store.publish(NAME, run_files(r), metadata={"run": r}) for r in (1, 2, 3))
    assert store.rollback(NAME) == v2
    assert store.load(NAME).metadata == {"run": 2}
    assert store.rollback(NAME) == v1
    with pytest.raises(UserError, match="oldest"):
        store.rollback(NAME)
    assert store.latest(NAME) == v1
    assert store.versions(NAME) == [v1, v2, v3]  # rollback hides nothing
    v4 = store.publish(NAME, run_files(4), metadata={"run": 4})
    assert v4 > v3 and store.latest(NAME) == v4 and store.versions(NAME) == [v1, v2, v3, v4]


def test_unknown_names_and_versions_raise_errors_that_name_them(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(ArtifactNotFound, match="'policy'") as err:
        store.load("policy")
    assert isinstance(err.value, UserError) and isinstance(err.value, KeyError)
    assert str(err.value).startswith("no artifact 'policy'")  # not quoted like a bare KeyError
    store.publish("policy", {"config": {"a": 1}})
    with pytest.raises(ArtifactNotFound, match="'policy' has no version 'v000009'.*v000001"):
        store.load("policy", "v000009")
    with pytest.raises(ArtifactNotFound):
        store.load("policy", "../policy/v000001")
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(UserError, match="invalid artifact name"):
            store.load(bad)


def test_bad_values_are_refused_before_anything_is_written(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(TypeError, match="'rows'.*list"):
        store.publish(NAME, {"config": {"a": 1}, "rows": [1, 2]})
    with pytest.raises(ValueError, match="invalid file key"):
        store.publish(NAME, {"a/b": b"x"})
    assert store.versions(NAME) == [] and not (tmp_path / NAME).exists()


def test_failure_mid_publish_keeps_previous_latest_and_leaves_nothing(tmp_path):
    store = Store(str(tmp_path))
    v1 = store.publish(NAME, run_files(1), metadata={"run": 1})
    # the table is written first, then serialising the dict fails
    with pytest.raises(TypeError, match="not JSON serializable"):
        store.publish(NAME, {"table": run_files(2)["table"], "config": {"bad": object()}})
    assert store.latest(NAME) == v1 and store.versions(NAME) == [v1]
    assert sorted(os.listdir(tmp_path / NAME)) == [".claims", "LATEST", v1]  # the temporary directory is gone
    assert sorted(os.listdir(tmp_path / NAME / ".claims")) == [v1, "v000002"]  # the failed publish's number stays used
    v2 = store.publish(NAME, run_files(2), metadata={"run": 2})
    assert store.latest(NAME) == v2 and store.versions(NAME) == [v1, v2]
    assert_complete(store, v1)
    assert_complete(store, v2)


# Publishes in forked processes that die with os._exit (no cleanup, no finally) at one
# point each: before every call of a function in raylib/store.py, right after each of the
# two commit steps (the directory move and the pointer flip) and, on the object-store path
# (a Python filesystem handler), before every filesystem write. Child k publishes run 1,
# then run 2 with a crash at point k, under <root>/k<k>; the parent forks k = 1, 2, ...
# until a child gets through, and prints how many crash points there were.
CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pyarrow as pa
    import pyarrow.fs as pafs
    from raylib import store as store_mod

    root, mode = sys.argv[1], sys.argv[2]
    FS_WRITES = ("create_dir", "delete_dir", "delete_file", "move", "copy_file", "open_output_stream")

    def publish(store, run):
        files = {"table": pa.table({"x": list(range(10 * run))}), "config": {"run": run}, "blob": bytes([run]) * 1000}
        store.publish("rewrites", files, metadata={"run": run})

    def child(crash_at):
        if mode == "fsspec":
            import fsspec
            fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file")))
            store = store_mod.Store(f"{root}/k{crash_at}", filesystem=fs)
        else:
            store = store_mod.Store(f"{root}/k{crash_at}")
        publish(store, 1)
        points = 0

        def crash_here(frame, event, arg):
            nonlocal points
            code = frame.f_code
            in_store = code.co_filename == store_mod.__file__
            if (
                (event == "call" and in_store)
                or (event == "return" and in_store and code.co_name in ("_commit", "_write_pointer"))
                or (event == "call" and code.co_filename == pafs.__file__ and code.co_name in FS_WRITES)
            ):
                points += 1
                if points == crash_at:
                    os._exit(3)

        sys.setprofile(crash_here)
        publish(store, 2)
        os._exit(0)

    for crash_at in range(1, 1000):
        pid = os.fork()
        if pid == 0:
            child(crash_at)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            break
        if code != 3:
            sys.exit(f"child {crash_at} failed with exit code {code}")
    print(crash_at - 1)
    """
)


@pytest.mark.parametrize("mode", ["local", "fsspec"])
def test_crash_at_any_point_of_publish_keeps_previous_version_latest(tmp_path, mode):
    script = tmp_path / "crash_publish.py"
    script.write_text(CRASH_SCRIPT)
    root = tmp_path / "crashes"
    result = subprocess.run(
        [sys.executable, str(script), str(root), mode], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    n_points = int(result.stdout)
    assert n_points > 10

    latest_after_crash = []
    for k in range(1, n_points + 1):
        store = make_store(str(root / f"k{k}"), mode)
        latest = store.latest(NAME)
        assert latest in ("v000001", "v000002"), k
        for version in store.versions(NAME):  # no half version is ever visible
            assert_complete(store, version)
        assert_complete(store, latest)
        latest_after_crash.append(latest)
        # and the store publishes fine after the crash
        after = store.publish(NAME, run_files(3), metadata={"run": 3})
        assert store.latest(NAME) == after and after == max(store.versions(NAME))
        assert_complete(store, after)

    # the pointer flip is the single commit point: the previous version stays latest
    # through every crash before it, the new one is latest after it
    n_old = latest_after_crash.count("v000001")
    assert latest_after_crash == ["v000001"] * n_old + ["v000002"] * (n_points - n_old)
    assert n_points - 2 <= n_old < n_points


def test_file_uri_and_plain_path_see_the_same_store(tmp_path):
    by_uri = Store(f"file://{tmp_path}")
    by_path = Store(str(tmp_path))
    v1 = by_uri.publish(NAME, run_files(1), metadata={"run": 1})
    assert by_path.versions(NAME) == [v1]
    assert_complete(by_path, v1)
    v2 = by_path.publish(NAME, run_files(2), metadata={"run": 2})
    assert by_uri.latest(NAME) == v2
    assert by_uri.rollback(NAME) == v1 and by_path.latest(NAME) == v1


def test_object_store_path_round_trip_in_memory():
    store = Store("/bucket/artifacts", filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory"))))
    try:
        v1 = store.publish(NAME, run_files(1), metadata={"run": 1})
        v2 = store.publish(NAME, run_files(2), metadata={"run": 2})
        assert store.versions(NAME) == [v1, v2] and store.latest(NAME) == v2
        assert_complete(store, v1)
        assert_complete(store, v2)
        assert store.rollback(NAME) == v1
        store.set_enabled(NAME, False)
        assert not store.enabled(NAME)
    finally:
        fsspec.filesystem("memory").rm("/bucket", recursive=True)


def test_feature_flags_default_on_per_artifact_and_persist(tmp_path):
    store = Store(str(tmp_path))
    assert store.enabled("rewrites") and store.enabled("policy")
    store.publish("rewrites", {"config": {"a": 1}})
    store.set_enabled("rewrites", False)
    assert not store.enabled("rewrites") and store.enabled("policy")
    assert not Store(str(tmp_path)).enabled("rewrites")  # persisted, seen by a new reader
    assert store.load("rewrites").json("config") == {"a": 1}  # the flag gates serving, not loading
    store.set_enabled("policy", False)  # a flag may be set before the first publish
    assert not store.enabled("policy") and store.latest("policy") is None
    store.set_enabled("rewrites", True)
    assert store.enabled("rewrites") and not store.enabled("policy")


PUBLISHER = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from raylib.store import Store

    root, who, runs, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = Store(root)
    time.sleep(max(0.0, start - time.time()))  # both publishers begin together
    for run in range(runs):
        store.publish("rewrites", {"table": pa.table({"who": [who] * (run + 1)}), "config": {"who": who, "run": run}},
                      metadata={"who": who, "run": run})
    """
)


def publish_concurrently(root: str, runs: int = 6) -> list[tuple[str, int]]:
    """Two publisher processes publishing ``runs`` versions each at the same time; returns
    (publisher, run) of every version, in version order, after checking each is intact."""
    import time

    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, root, who, str(runs), str(start)], stderr=subprocess.PIPE,
                              text=True) for who in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = Store(root)
    seen = []
    for version in store.versions(NAME):
        art = store.load(NAME, version)
        who, run = art.metadata["who"], art.metadata["run"]
        assert art.json("config") == {"who": who, "run": run}  # files and manifest of one publish
        assert art.table("table")["who"].to_pylist() == [who] * (run + 1)
        seen.append((who, run))
    return seen


def test_two_publishers_at_once_on_a_local_disk(tmp_path):
    seen = publish_concurrently(str(tmp_path / "store"))
    assert sorted(seen) == [(w, r) for w in ("a", "b") for r in range(6)]  # every publish kept, none overwritten
    assert Store(str(tmp_path / "store")).versions(NAME) == [f"v{i:06d}" for i in range(1, 13)]


def test_two_publishers_at_once_on_s3(s3):
    seen = publish_concurrently(s3.uri("store"))
    assert sorted(seen) == [(w, r) for w in ("a", "b") for r in range(6)]
    claims = [k for k in s3.keys("store/rewrites/.claims/")]
    assert len(claims) == len(set(claims)) >= 12


def test_rollback_to_a_named_version_moves_latest(tmp_path):
    store = Store(str(tmp_path))
    versions = [store.publish(NAME, run_files(run), metadata={"run": run}) for run in (1, 2, 3)]
    assert store.rollback(NAME, to=versions[0]) == versions[0] and Store(str(tmp_path)).latest(NAME) == versions[0]
    with pytest.raises(ArtifactNotFound, match="no version 'v000009'"):
        store.rollback(NAME, to="v000009")
    assert store.publish(NAME, run_files(4), metadata={"run": 4}) == "v000004"  # numbering continues past the pointer
