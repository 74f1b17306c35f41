"""The PDRFE job's report: a Table-5-like comparison and a Fig-2-like ablation chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raylib.job import png  # noqa: E402

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
                for kind in ("lr", "mlp"):
                    a, b = ce[ref][kind], ce[with_][kind]
                    row[kind] = {"reference": a, "with": b, "improvement": (a - b) / a}
                rows.append(row)
    return rows


def plot_ablation(ce: dict[str, dict[str, float]]) -> bytes:
    """Grouped bars as PNG: one panel per module and classifier, reference (blue) vs with
    module (orange)."""
    effects = ablation_effects(ce)
    modules = [m for m in ABLATIONS if any(e["module"] == m for e in effects)]
    fig, axes = plt.subplots(2, max(len(modules), 1), figsize=(4.2 * max(len(modules), 1), 6.5), squeeze=False)
    for col, module in enumerate(modules):
        rows = [e for e in effects if e["module"] == module]
        for r, kind in enumerate(("lr", "mlp")):
            ax = axes[r][col]
            x = range(len(rows))
            ref = [e[kind]["reference"] for e in rows]
            with_ = [e[kind]["with"] for e in rows]
            b1 = ax.bar([i - 0.2 for i in x], ref, 0.4, color="tab:blue", label="without module")
            b2 = ax.bar([i + 0.2 for i in x], with_, 0.4, color="tab:orange", label="with module")
            ax.bar_label(b1, fmt="%.3f", fontsize=7)
            ax.bar_label(b2, fmt="%.3f", fontsize=7)
            ax.set_xticks(list(x), [e["reference"] for e in rows], fontsize=8)
            ax.set_title(f"{module} ({'logistic regression' if kind == 'lr' else '2-layer NN'})", fontsize=9)
            ax.set_ylabel("test cross-entropy")
            lo = min(ref + with_)
            ax.set_ylim(lo * 0.9, max(ref + with_) * 1.05)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def markdown_report(summary: dict, chart: str) -> str:
    """report.md: data, Table-5-like cross-entropies, ablation effects, training metrics."""
    ce = summary["cross_entropy"]
    best = {k: min(v[k] for v in ce.values()) for k in ("lr", "mlp")}
    lines = [
        "# PDRFE: personalized customer/skill representations (seed 000)",
        "",
        f"Graph: {summary['edges']} interaction edges, {summary['customers']} customers, {summary['skills']} skills, "
        f"{summary['utterances']} unique utterances (encoder `{summary['encoder']}`). "
        f"Training: {summary['epochs']} epochs, {summary['workers']} Ray Train workers, device `{summary['device']}`.",
        "",
        "## Defect prediction, test cross-entropy (lower is better; Table 5)",
        "",
        "| model | logistic regression | 2-layer NN |",
        "| --- | ---: | ---: |",
    ]
    for name, v in ce.items():
        cell = {k: (f"**{v[k]:.4f}**" if v[k] == best[k] else f"{v[k]:.4f}") for k in ("lr", "mlp")}
        lines.append(f"| {name} | {cell['lr']} | {cell['mlp']} |")
    lines += ["", f"Defect base rate: {summary['defect_rate']:.4f} "
              f"(cross-entropy of the constant predictor: {summary['constant_cross_entropy']:.4f}).", "",
              "## Ablation (Fig. 2)", "", f"![ablation]({chart})", "",
              "| module | reference -> with | LR: ref / with (gain) | NN: ref / with (gain) |",
              "| --- | --- | --- | --- |"]
    for e in summary["ablation"]:
        cells = [f"{e[k]['reference']:.4f} / {e[k]['with']:.4f} ({100 * e[k]['improvement']:+.1f}%)" for k in ("lr", "mlp")]
        lines.append(f"| {e['module']} | {e['reference']} -> {e['with']} | {cells[0]} | {cells[1]} |")
    for module in ABLATIONS:
        rows = [e for e in summary["ablation"] if e["module"] == module]
        if rows:
            helped = sum(e[k]["improvement"] > 0 for e in rows for k in ("lr", "mlp"))
            verdict = "helps in every comparison" if helped == 2 * len(rows) else (
                "does not help in any comparison" if helped == 0 else f"helps in {helped} of {2 * len(rows)} comparisons")
            lines.append(f"\n- {module}: {verdict}.")
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
