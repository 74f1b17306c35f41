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
