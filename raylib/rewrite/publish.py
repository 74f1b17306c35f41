"""Publishing the rewrite table through the store (artifact ``rewrites``).

Each run publishes a NEW version that reflects today's evidence. Each row of the
previous version, keyed by its source utterance, is

* **replaced** when today's run rewrites the source: on a conflict the newest rewrite
  wins, the paper's recency rule ("in case of conflicts between the rewrites, we pick
  the most recent rewrite, since it has the latest data");
* **withdrawn** when today's traffic holds the source but today's run does not rewrite
  it, counted by reason: ``self_partition`` (Eq. 20 found no target better than the
  source itself, i.e. it now mostly succeeds as spoken, or none of its paths succeed) or
  the name of the first filter the candidate failed (``FILTERS``: lost its support,
  friction significantly worse, a generic target, too few customers). This is the
  paper's daily update that removes "stale and ineffective rewrites";
* **kept** when today's traffic does not hold the source at all: no data is no
  evidence against it, and the paper's incremental daily update carries it (a day
  without traffic for an utterance is common for the long tail). A run with no valid
  traffic therefore keeps the whole previous table.

"Today's traffic holds the source" = the utterance is in today's interpretation space
(``Model.space.utterances``: every normalized utterance of a non-interjection turn).
Serving reads the latest version and honours the artifact's feature flag
(``Store.set_enabled("rewrites", flag)``).
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.filters import FILTERS
from raylib.rewrite.mining import REWRITES, Mined
from raylib.store import Store

ARTIFACT = "rewrites"
SELF_PARTITION = "self_partition"
WITHDRAW_REASONS = (SELF_PARTITION, *FILTERS)
UNREWRITTEN = pa.schema([pa.field("utterance", pa.string(), nullable=False),
                         pa.field("reason", pa.string(), nullable=False)])


def unrewritten_sources(seen: Sequence[str], rewritten: pa.Table, filtered_out: pa.Table) -> pa.Table:
    """Each utterance of today's traffic (``seen``) that today's table ``rewritten`` does
    not rewrite, with the reason: the ``filter`` that removed its candidate in
    ``filtered_out``, else ``self_partition`` (it had no candidate)."""
    by_filter = dict(zip(filtered_out.column("utterance").to_pylist(), filtered_out.column("filter").to_pylist()))
    done = set(rewritten.column("utterance").to_pylist())
    rows = [(u, by_filter.get(u, SELF_PARTITION)) for u in seen if u not in done]
    return pa.table({"utterance": [u for u, _ in rows], "reason": [r for _, r in rows]}, schema=UNREWRITTEN)


def merge_today(previous: pa.Table | None, new: pa.Table, unrewritten: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The next version from ``previous``, today's rewrites ``new`` and today's
    ``unrewritten`` sources (see the module docstring). Returns (table sorted by
    utterance, previous rows withdrawn per reason, every reason listed)."""
    new = new.select(REWRITES.names).cast(REWRITES)
    withdrawn = dict.fromkeys(WITHDRAW_REASONS, 0)
    if previous is None or previous.num_rows == 0:
        merged = new
    else:
        old = previous.select(REWRITES.names).cast(REWRITES)
        old = old.filter(pc.invert(pc.is_in(old.column("utterance"), value_set=new.column("utterance"))))
        gone = pc.is_in(old.column("utterance"), value_set=unrewritten.column("utterance"))
        reason = dict(zip(unrewritten.column("utterance").to_pylist(), unrewritten.column("reason").to_pylist()))
        for u in old.filter(gone).column("utterance").to_pylist():
            withdrawn[reason[u]] += 1
        merged = pa.concat_tables([old.filter(pc.invert(gone)), new])
    return merged.take(pc.sort_indices(merged, sort_keys=[("utterance", "ascending")])), withdrawn


def publish_rewrites(store: Store, mined: Mined, metadata: dict,
                     enabled: bool | None = None) -> tuple[str, pa.Table, dict[str, int]]:
    """Publish ``merge_today`` of the latest version and a mining run; returns (version,
    merged, withdrawn per reason). ``enabled`` sets the feature flag (None leaves it)."""
    previous = store.load(ARTIFACT).table("table") if store.latest(ARTIFACT) else None
    unrewritten = unrewritten_sources(mined.model.space.utterances.tolist(), mined.table, mined.filtered_out)
    merged, withdrawn = merge_today(previous, mined.table, unrewritten)
    version = store.publish(ARTIFACT, {"table": merged}, metadata={
        **metadata, "n_new": mined.table.num_rows, "n_rows": merged.num_rows, "withdrawn_by_reason": withdrawn})
    if enabled is not None:
        store.set_enabled(ARTIFACT, enabled)
    return version, merged, withdrawn
