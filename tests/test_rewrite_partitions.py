"""Hash buckets of the Ray mining path follow the data size and the cluster size."""

import pytest

from raylib.rewrite.distributed import BUCKETS_PER_CPU, ROWS_PER_BUCKET, shuffle_partitions


def test_small_data_gets_work_for_every_cpu():
    assert shuffle_partitions(1000, 2) == 2 * BUCKETS_PER_CPU
    assert shuffle_partitions(1000, 64) == 64 * BUCKETS_PER_CPU
    assert shuffle_partitions(0, 0) == 1


def test_buckets_grow_with_rows_and_stay_bounded_in_size():
    for rows in (10**6, 16 * 10**6, 45 * 10**9):
        b = shuffle_partitions(rows, 2)
        assert b >= rows / ROWS_PER_BUCKET and rows / b <= ROWS_PER_BUCKET
    assert shuffle_partitions(16 * 10**6, 2) == 2 * shuffle_partitions(8 * 10**6, 2)


def test_fractional_cpus_round_up_and_bad_arguments_raise():
    assert shuffle_partitions(10, 1.5) == 2 * BUCKETS_PER_CPU
    with pytest.raises(ValueError):
        shuffle_partitions(-1, 2)
    with pytest.raises(ValueError):
        shuffle_partitions(10, 2, rows_per_bucket=0)


def test_split_by_key_puts_each_key_in_one_part_and_loses_nothing():
    import pyarrow as pa

    from raylib.rewrite.counts import COUNTS, reduce_counts
    from raylib.rewrite.distributed import split_by_key

    rows = [("pair", f"u{i % 7}", f"h{i % 5}", 1, i % 2) for i in range(60)]
    counts = pa.Table.from_pylist([dict(zip(COUNTS.names, r)) for r in rows], schema=COUNTS)
    halves = [split_by_key(counts.slice(0, 30), 4), split_by_key(counts.slice(30), 4)]
    assert all(len(h) == 4 for h in halves)
    keys_of = [{(k1, k2) for h in halves for k1, k2 in zip(h[j].column("key1").to_pylist(),
                                                          h[j].column("key2").to_pylist())} for j in range(4)]
    assert sum(len(k) for k in keys_of) == len(set.union(*keys_of))  # no key in two parts
    summed = reduce_counts([reduce_counts([h[j] for h in halves]) for j in range(4)])
    assert summed.equals(reduce_counts(counts))


def _fig_counts():
    """Counts of a few sessions with non-ASCII utterances and states (sort order matters)."""
    import pyarrow as pa

    from raylib.rewrite.counts import session_counts
    from raylib.rewrite.sessions import sessionize
    from raylib.schema import INTERACTIONS

    said = [("c1", 0, "play é", "error"), ("c1", 1000, "play e", "success"), ("c2", 0, "play Z", "error"),
            ("c2", 1000, "play é", "error"), ("c2", 2000, "play ü", "success"), ("c3", 0, "play e", "success")]
    rows = [{"customer_id": c, "device_id": "d", "timestamp": t, "utterance": u, "domain": "Music",
             "intent": "PlayIntent", "slots": "q=" + u.split()[1], "status": "ok" if st == "success" else st, "skill_id": "s", "defect": st != "success",
             "rewrite": None} for c, t, u, st in said]
    table = pa.Table.from_pylist([{k: r.get(k) for k in INTERACTIONS.names} for r in rows], schema=INTERACTIONS)
    return session_counts(sessionize(table))


def test_codes_of_disjoint_parts_against_one_dictionary_equal_the_codes_of_the_whole():
    import numpy as np

    from raylib.rewrite.codes import Codes, Dictionary, as_objects, code_counts
    from raylib.rewrite.distributed import split_by_key

    counts = _fig_counts()
    whole = Dictionary.of(counts)
    # The dictionary is sorted as numpy sorts the same Python strings (the local path's order).
    for values, kind in ((whole.states, "transition"), (whole.utterances, "pair")):
        keys = counts.filter(counts.column("kind").to_numpy(zero_copy_only=False) == kind).column("key1").to_pylist()
        assert list(as_objects(values)) == list(np.unique(np.asarray(keys, dtype=object)))
    parts = split_by_key(counts, 3)
    coded = Codes.concat([code_counts(p, whole) for p in parts])
    direct = code_counts(counts, whole)
    for name in ("transition", "pair", "utterance"):
        a, b = getattr(coded, name), getattr(direct, name)
        assert sorted(map(tuple, a)) == sorted(map(tuple, b)) and len(a) > 0
    assert coded.stats == direct.stats and direct.stats.n_sessions == 3
    # Read back, every transition names its strings again.
    states = as_objects(whole.states)
    back = {(states[i], "<success>" if j == -1 else "<failure>" if j == -2 else states[j], n)
            for i, j, n in direct.transition}
    t = counts.filter(counts.column("kind").to_numpy(zero_copy_only=False) == "transition")
    assert back == set(zip(t.column("key1").to_pylist(), t.column("key2").to_pylist(), t.column("count").to_pylist()))
    assert Codes.concat([]).transition.shape == (0, 3)


def test_coding_refuses_a_state_outside_the_dictionary():
    import pyarrow as pa
    import pytest as _pytest

    from raylib.rewrite.codes import Dictionary, code_counts
    from raylib.rewrite.counts import COUNTS

    counts = pa.Table.from_pylist([{"kind": "transition", "key1": "a", "key2": "b", "count": 1, "defects": 0}],
                                  schema=COUNTS)
    with _pytest.raises(ValueError, match="never starts a transition"):
        code_counts(counts, Dictionary.of(counts))
