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
(``Model.space.utterances``: every normalized utterance of a non-interjection turn of a
session mining learns from; ``raylib.rewrite.sessions.mined_sessions``).

The **online blacklist** (artifact ``rewrite_blacklist``: pairs that lost the online A/B,
``raylib.rewrite.online``) overrides all of this: a blacklisted pair is never published
again (today's candidate for its source is dropped, and the source's earlier row with
it, counted ``blacklisted``), and ``withdraw_blacklisted`` publishes the blacklist's new
entries and a rewrites version without them as soon as the A/B finds them. Only the
pair is banned: its source may be rewritten to another target later.

Chains: a table may hold u_s -> u_t and u_t -> u_c; a's target is left as it is, not
re-pointed to u_c. Serving is one lookup per request (``serve_apps``; the simulator's
``served_utterances`` alike), so u_s's speakers get u_t, never u_c, and Eq. 20 chose u_t
from u_s's own paths, which run through u_c when u_t failed them; re-pointing would
serve u_s's speakers a target none of them reached. The online A/B judges u_s -> u_t on
u_s's speakers.
Serving reads the latest version and honours the artifact's feature flag
(``Store.set_enabled("rewrites", flag)``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.filters import FILTERS
from raylib.rewrite.mining import REWRITES, Mined
from raylib.store import Store

ARTIFACT = "rewrites"
BLACKLIST_ARTIFACT = "rewrite_blacklist"
SELF_PARTITION, BLACKLISTED = "self_partition", "blacklisted"
WITHDRAW_REASONS = (SELF_PARTITION, *FILTERS, BLACKLISTED)
BLACKLIST = pa.schema([pa.field("utterance", pa.string(), nullable=False),
                       pa.field("rewrite", pa.string(), nullable=False),
                       pa.field("round", pa.int64(), nullable=False),  # the round whose A/B it lost
                       pa.field("p_value", pa.float64(), nullable=False)])  # the A/B's p_higher
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


def _banned(table: pa.Table, blacklist: pa.Table | None) -> pa.Array:
    """Rows of ``table`` whose (utterance, rewrite) pair is on ``blacklist``."""
    if blacklist is None or blacklist.num_rows == 0 or table.num_rows == 0:
        return pa.array(np.zeros(table.num_rows, dtype=bool))
    pairs = set(zip(blacklist.column("utterance").to_pylist(), blacklist.column("rewrite").to_pylist()))
    return pa.array([p in pairs for p in zip(table.column("utterance").to_pylist(),
                                             table.column("rewrite").to_pylist())])


def merge_today(previous: pa.Table | None, new: pa.Table, unrewritten: pa.Table,
                blacklist: pa.Table | None = None) -> tuple[pa.Table, dict[str, int]]:
    """The next version from ``previous``, today's rewrites ``new``, today's
    ``unrewritten`` sources and the online ``blacklist`` (see the module docstring).
    Returns (table sorted by utterance, previous rows withdrawn per reason, every reason
    listed)."""
    new = new.select(REWRITES.names).cast(REWRITES)
    banned_new = _banned(new, blacklist)
    if pc.any(banned_new).as_py():
        sources = new.filter(banned_new).column("utterance")
        unrewritten = pa.concat_tables([unrewritten, pa.table(
            {"utterance": sources, "reason": pa.array([BLACKLISTED] * len(sources), pa.string())},
            schema=UNREWRITTEN).cast(unrewritten.schema)])
        new = new.filter(pc.invert(banned_new))
    withdrawn = dict.fromkeys(WITHDRAW_REASONS, 0)
    if previous is None or previous.num_rows == 0:
        merged = new
    else:
        old = previous.select(REWRITES.names).cast(REWRITES)
        old = old.filter(pc.invert(pc.is_in(old.column("utterance"), value_set=new.column("utterance"))))
        banned_old = _banned(old, blacklist).to_numpy(zero_copy_only=False)
        gone = pc.is_in(old.column("utterance"), value_set=unrewritten.column("utterance")).to_numpy(
            zero_copy_only=False) | banned_old
        reason = dict(zip(unrewritten.column("utterance").to_pylist(), unrewritten.column("reason").to_pylist()))
        for u, banned in zip(old.filter(pa.array(gone)).column("utterance").to_pylist(), banned_old[gone]):
            withdrawn[BLACKLISTED if banned else reason[u]] += 1
        merged = pa.concat_tables([old.filter(pa.array(~gone)), new])
    return merged.take(pc.sort_indices(merged, sort_keys=[("utterance", "ascending")])), withdrawn


def publish_rewrites(store: Store, mined: Mined, metadata: dict,
                     enabled: bool | None = None) -> tuple[str, pa.Table, dict[str, int]]:
    """Publish ``merge_today`` of the latest version and a mining run; returns (version,
    merged, withdrawn per reason). ``enabled`` sets the feature flag (None leaves it)."""
    previous = store.load(ARTIFACT).table("table") if store.latest(ARTIFACT) else None
    unrewritten = unrewritten_sources(mined.model.space.utterances.tolist(), mined.table, mined.filtered_out)
    merged, withdrawn = merge_today(previous, mined.table, unrewritten, load_blacklist(store))
    version = store.publish(ARTIFACT, {"table": merged}, metadata={
        **metadata, "n_new": mined.table.num_rows, "n_rows": merged.num_rows, "withdrawn_by_reason": withdrawn})
    if enabled is not None:
        store.set_enabled(ARTIFACT, enabled)
    return version, merged, withdrawn


def load_blacklist(store: Store) -> pa.Table | None:
    """The latest online blacklist (None: nothing was ever blacklisted)."""
    return store.load(BLACKLIST_ARTIFACT).table("table") if store.latest(BLACKLIST_ARTIFACT) else None


def withdraw_blacklisted(store: Store, losers: pa.Table, rnd: int) -> dict:
    """Add the A/B's ``losers`` (``raylib.rewrite.online.AB`` rows) of round ``rnd`` to the
    blacklist and publish a rewrites version without any blacklisted pair. Returns the
    versions published (None: nothing new to blacklist) and the rows withdrawn."""
    if losers.num_rows == 0:
        return {"blacklist_version": None, "rewrites_version": None, "withdrawn": 0}
    entries = pa.table({"utterance": losers.column("utterance"), "rewrite": losers.column("rewrite"),
                        "round": pa.array([rnd] * losers.num_rows, pa.int64()),
                        "p_value": losers.column("p_higher")}, schema=BLACKLIST)
    previous = load_blacklist(store)
    blacklist = entries if previous is None else pa.concat_tables([previous.cast(BLACKLIST), entries])
    blacklist_version = store.publish(BLACKLIST_ARTIFACT, {"table": blacklist}, metadata={"round": rnd})
    table = store.load(ARTIFACT).table("table")
    merged, withdrawn = merge_today(table, REWRITES.empty_table(), UNREWRITTEN.empty_table(), blacklist)
    version = store.publish(ARTIFACT, {"table": merged}, metadata={
        "round": rnd, "n_new": 0, "n_rows": merged.num_rows, "withdrawn_by_reason": withdrawn,
        "online_blacklist": blacklist_version})
    return {"blacklist_version": blacklist_version, "rewrites_version": version, "withdrawn": withdrawn[BLACKLISTED]}
