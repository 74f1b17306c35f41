"""The PDRFE job's report: link prediction on the held-out edges, the two fair Table-5-like
defect-prediction tables, where each PDRFE variant stands against the baselines, and a
Fig-2-like ablation chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raylib.graph.linkpred import POPULARITY  # noqa: E402
from raylib.graph.models import BASELINES  # noqa: E402
from raylib.job import png  # noqa: E402

# The two fair defect-prediction tables: the utterance vector given to every model's classifier, or to none.
TABLES = ("with_utterance", "without_utterance")
TABLE_TITLES = {"with_utterance": "utterance vector given to every model's classifier",
                "without_utterance": "utterance vector given to no model's classifier"}
CLASSIFIERS = {"lr": "logistic regression", "mlp": "2-layer NN"}
LINK_METRICS = ("auc", "mrr", "hits@10")

# Fig. 2 of seed 000: for each module, (reference model without it, model with it).
ABLATIONS: dict[str, list[tuple[str, str]]] = {
    "Personalizer": [("RGCN", "Per"), ("EC", "PDRFE (w/ NNConv)"), ("EAtt", "PDRFE (w/ edge attention)")],
    "NNConv": [("RGCN", "EC"), ("Per", "PDRFE (w/ NNConv)")],
    "Edge attention": [("RGCN", "EAtt"), ("Per", "PDRFE (w/ edge attention)")],
}


def ablation_effects(ce: dict[str, dict[str, float]]) -> list[dict]:
    """Every (module, reference, with) pair whose two models were run, with the relative
    cross-entropy change ``(ref - with) / ref`` per classifier (positive: module helps)."""
    rows = []
    for module, pairs in ABLATIONS.items():
        for ref, with_ in pairs:
            if ref in ce and with_ in ce:
                row = {"module": module, "reference": ref, "with": with_}
                for kind in CLASSIFIERS:
                    a, b = ce[ref][kind], ce[with_][kind]
                    row[kind] = {"reference": a, "with": b, "improvement": (a - b) / a}
                rows.append(row)
    return rows


def plot_ablation(tables: dict[str, dict[str, dict[str, float]]]) -> bytes:
    """Grouped bars as PNG: one panel per (table, classifier) row and module column,
    reference (blue) vs with module (orange)."""
    effects = {table: ablation_effects(ce) for table, ce in tables.items()}
    modules = [m for m in ABLATIONS if any(e["module"] == m for rows in effects.values() for e in rows)]
    panels = [(table, kind) for table in tables for kind in CLASSIFIERS]
    cols = max(len(modules), 1)
    fig, axes = plt.subplots(len(panels), cols, figsize=(4.2 * cols, 3.2 * len(panels)), squeeze=False)
    for col, module in enumerate(modules):
        for r, (table, kind) in enumerate(panels):
            rows = [e for e in effects[table] if e["module"] == module]
            ax = axes[r][col]
            x = range(len(rows))
            ref = [e[kind]["reference"] for e in rows]
            with_ = [e[kind]["with"] for e in rows]
            b1 = ax.bar([i - 0.2 for i in x], ref, 0.4, color="tab:blue", label="without module")
            b2 = ax.bar([i + 0.2 for i in x], with_, 0.4, color="tab:orange", label="with module")
            ax.bar_label(b1, fmt="%.3f", fontsize=7)
            ax.bar_label(b2, fmt="%.3f", fontsize=7)
            ax.set_xticks(list(x), [e["reference"] for e in rows], fontsize=8)
            ax.set_title(f"{module}, {CLASSIFIERS[kind]}\n({table.replace('_', ' ')})", fontsize=9)
            ax.set_ylabel("test cross-entropy")
            if rows:
                ax.set_ylim(min(ref + with_) * 0.9, max(ref + with_) * 1.05)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def columns(summary: dict) -> list[tuple[str, dict[str, float], bool]]:
    """Every scored column of the report as ``(label, {model: value}, lower_is_better)``:
    link-prediction metrics over all held-out edges and over new pairs, then the
    cross-entropy of each classifier in each fair table."""
    out = []
    for subset in ("all", "new_pairs"):
        for metric in LINK_METRICS:
            values = {m: v[subset][metric] for m, v in summary["link_prediction"].items() if v[subset] is not None}
            if values:
                out.append((f"link {metric} ({subset.replace('_', ' ')})", values, False))
    for table in TABLES:
        for kind, name in CLASSIFIERS.items():
            values = {m: v[kind] for m, v in summary[f"cross_entropy_{table}"].items()}
            out.append((f"{name} cross-entropy, {table.replace('_', ' ')}", values, True))
    return out


def standing(model: str, values: dict[str, float], lower_is_better: bool, rivals: set[str]) -> tuple[int, int, list]:
    """``(rank, of, beaten_by)``: ``model``'s 1-based rank among ``model`` and the
    ``rivals`` present in ``values`` (ties share the better rank) and the rivals strictly
    better than it, best first."""
    sign = 1.0 if lower_is_better else -1.0
    field = [m for m in values if m in rivals or m == model]
    better = sorted((m for m in field if sign * values[m] < sign * values[model]), key=lambda m: sign * values[m])
    return 1 + len(better), len(field), better


def standing_lines(summary: dict) -> list[str]:
    """Markdown: each PDRFE variant's rank against the baselines (and the popularity
    reference) in every column, then every column it does not win and who beats it."""
    fair = set(summary["cross_entropy_without_utterance"]) - set(summary["embedding_carries_utterance"])
    models = sorted(m for m in fair | set(summary["link_prediction"]) if m.startswith("PDRFE"))
    if not models:
        return ["No PDRFE variant was run."]
    rivals = set(BASELINES) | {POPULARITY}
    lines = ["| column | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
    lost: dict[str, list[str]] = {m: [] for m in models}
    for label, values, lower in columns(summary):
        cells = []
        for model in models:
            if model not in values:
                cells.append("-")
                continue
            rank, of, better = standing(model, values, lower, rivals)
            cells.append(f"{rank}/{of}")
            if better:
                lost[model].append(f"{label} ({', '.join(f'{b} {values[b]:.4f}' for b in better)} "
                                   f"vs {values[model]:.4f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines + [f"- {m}: " + ("wins every column." if not lost[m] else "does not win " + "; ".join(lost[m]) + ".")
                    for m in models]


def _table(values: dict[str, dict], keys: list[str], headers: list[str], lower: bool, marked: set[str]) -> list[str]:
    """A markdown table of ``values[model][key]``, the best of each column in bold
    (models in ``marked`` get a dagger and do not compete)."""
    pick = min if lower else max
    best = {k: pick((v[k] for m, v in values.items() if m not in marked), default=None) for k in keys}
    lines = ["| model | " + " | ".join(headers) + " |", "| --- |" + " ---: |" * len(keys)]
    for name, v in values.items():
        cells = [f"**{v[k]:.4f}**" if v[k] == best[k] else f"{v[k]:.4f}" for k in keys]
        lines.append(f"| {name}{' †' if name in marked else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def verdict(effects: list[dict], module: str) -> str | None:
    """Whether ``module`` lowers the cross-entropy in the ablation pairs that test it."""
    gains = [e[k]["improvement"] > 0 for e in effects if e["module"] == module for k in CLASSIFIERS]
    if not gains:
        return None
    if all(gains):
        return "helps in every comparison"
    return "does not help in any comparison" if not any(gains) else f"helps in {sum(gains)} of {len(gains)} comparisons"


def affinity_lines(affinity: dict | None) -> list[str]:
    """Markdown: the simulator's affinity in the graph, the truth's own link scores, and
    how far each model's link scores order a customer's skills as the affinity does
    (``raylib.graph.affinity``; only with ``--truth``)."""
    if affinity is None:
        return []
    g = affinity["in_graph"]
    lines = ["## Does the graph carry the customer-skill affinity? (simulator truth)", "",
             f"Over the graph's {g['pairs']} customer-skill pairs, Spearman of the true affinity with the pair's "
             f"number of interactions {g['uses_spearman']:.3f} (within customer {g['uses_spearman_within_customer']:.3f})"
             f" and with its defect rate {g['defect_rate_spearman']:.3f} (within customer "
             f"{g['defect_rate_spearman_within_customer']:.3f}).", "",
             "| scored by the truth | AUC | new pairs AUC | new pairs MRR |", "| --- | ---: | ---: | ---: |"]
    for name, v in affinity["oracle_link"].items():
        new = v["new_pairs"] or {"auc": float("nan"), "mrr": float("nan")}
        lines.append(f"| {name} | {v['all']['auc']:.4f} | {new['auc']:.4f} | {new['mrr']:.4f} |")
    lines += ["", "Recovery: mean Spearman, over held-out edges, of the model's link scores of the edge's skill and "
              "its negatives with their true affinities (1: the affinity's order; 0: none of it).", "",
              "| model | recovery |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in affinity["recovery"].items()]
    return lines + [""]


def markdown_report(summary: dict, chart: str) -> str:
    """report.md: data, link prediction, the two fair defect tables, PDRFE's standing,
    ablation effects, training metrics, inputs and notes."""
    carried = set(summary["embedding_carries_utterance"])
    links = {m: {f"{s}:{k}": v[s][k] for s in ("all", "new_pairs") if v[s] for k in LINK_METRICS}
             for m, v in summary["link_prediction"].items()}
    keys = [f"{s}:{k}" for s in ("all", "new_pairs") for k in LINK_METRICS if all(f"{s}:{k}" in v for v in links.values())]
    names = {"auc": "AUC", "mrr": "MRR", "hits@10": "Hits@10"}
    lines = [
        "# PDRFE: personalized customer/skill representations (seed 000)",
        "",
        f"Graph: {summary['edges']} interaction edges, {summary['customers']} customers, {summary['skills']} skills, "
        f"{summary['utterances']} unique utterances (encoder `{summary['encoder']}`). "
        f"Training: {summary['epochs']} epochs, {summary['workers']} Ray Train workers, device `{summary['device']}`.",
        "",
        "## Link prediction on the held-out edges (higher is better)",
        "",
        f"{summary['link_test_edges']} held-out edges, {summary['link_test_new_pairs']} of them new customer-skill "
        f"pairs (no training edge), each against the same {summary['link_negatives']} sampled non-edge skills for "
        "every model. Models with the personalizer score an edge with its own utterance (Eq. 5), which often "
        "names the domain; the others score the customer alone.",
        "",
        *_table(links, keys, [("new pairs " if k.startswith("new") else "") + names[k.split(":")[1]] for k in keys],
                False, set()),
    ]
    lines += affinity_lines(summary.get("affinity"))
    for table in TABLES:
        lines += [f"## Defect prediction, test cross-entropy (lower is better; Table 5), {TABLE_TITLES[table]}", "",
                  *_table(summary[f"cross_entropy_{table}"], list(CLASSIFIERS), list(CLASSIFIERS.values()), True,
                          carried if table == "without_utterance" else set())]
    if carried:
        lines += ["† its embedding itself carries the utterance vector: not comparable without it.", ""]
    lines += [f"Defect base rate: {summary['defect_rate']:.4f} (cross-entropy of the constant predictor: "
              f"{summary['constant_cross_entropy']:.4f}).", "", "## Where PDRFE stands", "", *standing_lines(summary),
              "", "## Ablation (Fig. 2)", "", f"![ablation]({chart})", "",
              "| table | module | reference -> with | LR: ref / with (gain) | NN: ref / with (gain) |",
              "| --- | --- | --- | --- | --- |"]
    for table, effects in summary["ablation"].items():
        for e in effects:
            cells = [f"{e[k]['reference']:.4f} / {e[k]['with']:.4f} ({100 * e[k]['improvement']:+.1f}%)"
                     for k in CLASSIFIERS]
            lines.append(f"| {table.replace('_', ' ')} | {e['module']} | {e['reference']} -> {e['with']} | "
                         f"{cells[0]} | {cells[1]} |")
    lines.append("")
    lines += [f"- {module}, {table.replace('_', ' ')}: {v}." for table, effects in summary["ablation"].items()
              for module in ABLATIONS if (v := verdict(effects, module))]
    lines += ["", "## Representation learning", "", "| model | final loss | loss by epoch | train edges/s |",
              "| --- | ---: | --- | ---: |"]
    for name, m in summary["training"].items():
        hist = ", ".join(f"{x:.3f}" for x in m["loss_history"])
        lines.append(f"| {name} | {m['loss']:.4f} | {hist} | {m['edges_per_s']:.0f} |")
    inputs = {"input rows": summary["input_rows"], "rejected rows": summary["rejected_rows"],
              **summary["rejected_by_reason"], **summary["graph"]}
    lines += ["", "## Inputs", "", "```", *(f"{k}: {v}" for k, v in inputs.items()), "```", ""]
    lines += summary.get("notes", [])
    return "\n".join(lines) + "\n"
