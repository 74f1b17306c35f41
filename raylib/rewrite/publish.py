"""Publishing the rewrite table through the store (artifact ``rewrites``).

Each run publishes a NEW version that merges the previous one with the new rewrites;
on a conflict (the same source utterance) the newest rewrite wins, the paper's recency
rule ("in case of conflicts between the rewrites, we pick the most recent rewrite").
Serving reads the latest version and honours the artifact's feature flag
(``Store.set_enabled("rewrites", flag)``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.mining import REWRITES
from raylib.store import Store

ARTIFACT = "rewrites"


def merge_newest_wins(previous: pa.Table | None, new: pa.Table) -> pa.Table:
    """``previous`` rows whose utterance ``new`` does not rewrite, plus all of ``new``;
    sorted by utterance."""
    new = new.select(REWRITES.names).cast(REWRITES)
    if previous is None or previous.num_rows == 0:
        merged = new
    else:
        old = previous.select(REWRITES.names).cast(REWRITES)
        stale = pc.is_in(old.column("utterance"), value_set=new.column("utterance"))
        merged = pa.concat_tables([old.filter(pc.invert(stale)), new])
    return merged.take(pc.sort_indices(merged, sort_keys=[("utterance", "ascending")]))


def publish_rewrites(store: Store, table: pa.Table, metadata: dict, enabled: bool | None = None) -> tuple[str, pa.Table]:
    """Publish the merge of the latest version and ``table``; returns (version, merged).
    ``enabled`` sets the feature flag (None leaves it as it is)."""
    previous = store.load(ARTIFACT).table("table") if store.latest(ARTIFACT) else None
    merged = merge_newest_wins(previous, table)
    version = store.publish(ARTIFACT, {"table": merged}, metadata={**metadata, "n_new": table.num_rows,
                                                                   "n_rows": merged.num_rows})
    if enabled is not None:
        store.set_enabled(ARTIFACT, enabled)
    return version, merged
