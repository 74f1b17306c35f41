"""report.md of a mining run: stage counts, filters, Table-1-like examples, truth metrics."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.mining import Mined

_STAGES = [
    ("n_turns", "valid turns read"),
    ("n_interjections", "interjections removed (Stop/Cancel)"),
    ("interjection_only", "sessions made only of interjections"),
    ("n_sessions", "sessions (delta_tau gap, per customer + device)"),
    ("rewritten_sessions", "sessions that met a served rewrite (online A/B evidence, not mined)"),
    ("n_utterances", "distinct utterances |U|"),
    ("n_interpretations", "interpretations |H| (transient states)"),
    ("n_transitions", "non-zero entries of Q"),
    ("n_sources", "source interpretations solved"),
    ("n_sources_with_better_target", "sources whose h* differs from h_s (Eq. 18)"),
    ("share_absorbed_within_depth",
     "share of sources whose depth- and epsilon-limited sub-chain absorbs >= 99% of the walk"),
    ("mean_absorbed_mass", "mean absorbed probability inside V_s"),
    ("n_candidates", "utterance-level candidates (Eq. 20)"),
    ("n_rewrites", "rewrites after filters"),
]


def _examples(table: pa.Table, n: int, label: str) -> list[str]:
    if table.num_rows == 0:
        return []
    order = pc.sort_indices(table, sort_keys=[("score", "descending"), ("utterance", "ascending")])
    rows = table.take(order).slice(0, n).to_pylist()
    return [f"| {r['utterance']} | {r['rewrite']} | {r['score']:.3f} | {label or r.get('filter', '')} |" for r in rows]


def render_report(summary: dict, mined: Mined) -> str:
    stages = summary["stages"]
    lines = ["# Rewrite mining (seed 001: absorbing Markov chain)", "",
             "## Counts per stage", "", "| stage | value |", "| --- | --- |"]
    for key, text in _STAGES:
        value = stages.get(key)
        lines.append(f"| {text} | {value:.4f} |" if isinstance(value, float) else f"| {text} | {value} |")
    if summary.get("message"):
        lines += ["", f"**{summary['message']}**"]
    lines += ["", f"Rejected input rows: {summary['rejected_rows']}"]
    for reason, count in summary["rejected_by_reason"].items():
        lines.append(f"- {reason}: {count}")
    lines += ["", "## Removed by each filter (in order)", "", "| filter | removed |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary["removed_by_filter"].items()]
    filters = summary["params"]["filters"]
    lines += ["", f"Z-test rule `{filters['z_rule']}` at alpha = {filters['alpha']} ("
                  + ("removes a rewrite whose friction is significantly higher than the source's"
                     if filters["z_rule"] == "paper" else "keeps only rewrites whose friction is significantly lower")
                  + ")."]
    art = summary["artifact"]
    lines += ["", f"Published `{art['name']}` {summary['published_version']} ({art['rows_after_merge']} rows after merging "
                  f"with the previous version: today's rewrites win, earlier rewrites of sources today's traffic holds "
                  f"but no longer rewrites are withdrawn, the rest are kept; "
                  f"feature flag {'on' if art['enabled'] else 'off'}).",
              "", "| earlier rewrites withdrawn because | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary["withdrawn_by_reason"].items()]
    lines += ["", "## Examples (like the paper's Table 1)", "",
              "| original utterance | rewrite | score (Eq. 20) | kept / removed by |", "| --- | --- | --- | --- |"]
    lines += _examples(mined.table, 10, "kept")
    lines += _examples(mined.filtered_out, 5, "")
    truth = summary.get("truth")
    if truth:
        lines += ["", "## Quality against the simulator's ground truth", "", "| metric | value |", "| --- | --- |"]
        for key, value in truth.items():
            if key == "replay":
                continue
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
        if "replay" in truth:
            lines += ["", "### Replay of held-out traffic", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in truth["replay"].items()]
    lines += ["", "Parameters: `" + str(summary["params"]) + "`", ""]
    return "\n".join(lines)
