"""report.md and charts for the routing jobs: the OPE table (Table 1 metrics of RP, LP, HP),
RPDR per intent, the guard-rail decision, true values when known, the per-intent
replication chart of RP, LP and HP (like the paper's Fig. 7) and the refresh curve."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raylib.job import png  # noqa: E402


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, dict):
        if x.get("lo") is None or x["lo"] != x["lo"]:
            return f"{x['value']:.4f}"
        return f"{x['value']:.4f} [{x['lo']:.4f}, {x['hi']:.4f}]"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _rule(rule: dict | None) -> str:
    """How an intent's RPDR was set (``learn.segment_rpdr``): Eq. 4, or RP only and why."""
    if rule is None:
        return "-"
    return "Eq. 4" if rule["rule"] == "eq4" else f"RP only: {rule['reason']}"


def _rail(check: dict | None) -> str:
    """An intent's replication guard-rail (``guardrails.replication_check``): verdict, and
    the interval a small intent was judged by."""
    if check is None:
        return "-"
    verdict = "pass" if check["passed"] else "FAIL"
    lo, hi = check["interval"]
    return f"{verdict} (upper bound of [{lo:.3f}, {hi:.3f}])" if check["judged_by"] != "value" else verdict


OPE_ROWS = (
    ("IPS expected reward", "ips"),
    ("SNIPS", "snips"),
    ("DM", "dm"),
    ("DR", "dr"),
    ("estimate used", "estimate"),
    ("replication", "replication"),
    ("replication (defect)", "replication_defect"),
    ("replication (non-defect)", "replication_nondefect"),
    ("L1 distance mean", "l1_mean"),
    ("L1 distance std", "l1_std"),
    ("mean IPS weight", "ips_weight_mean"),
    ("max IPS weight", "ips_weight_max"),
    ("effective sample size", "ess"),
    ("stochastic exploration", "exploration"),
    ("stochastic exploration (defect)", "exploration_defect"),
    ("stochastic exploration (non-defect)", "exploration_nondefect"),
)


def replication_chart(replication: dict, kappa_target: float) -> bytes:
    """Grouped bars (PNG) of per-intent replication for RP, LP and HP with the κ̃ line."""
    intents = sorted(replication, key=lambda j: -replication[j]["n"])[:30]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(intents) + 2), 4))
    width = 0.27
    for i, name in enumerate(("rp", "lp", "hp")):
        xs = [k + (i - 1) * width for k in range(len(intents))]
        ax.bar(xs, [replication[j][name] for j in intents], width, label=name.upper())
    ax.axhline(kappa_target, color="black", linestyle="--", linewidth=1, label="κ̃")
    ax.set_xticks(range(len(intents)))
    ax.set_xticklabels(intents, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("replication rate vs current policy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return png(fig)


def curve_chart(refresh: dict) -> bytes:
    """True value (PNG) of the baseline and each refreshed HP (deployed policy per round)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = list(range(len(refresh["deployed_curve"])))
    ax.plot(xs, refresh["deployed_curve"], marker="o")
    ax.set_xticks(xs)
    ax.set_xticklabels(["baseline"] + [f"HP{i}" for i in xs[1:]])
    ax.set_ylabel("true expected reward")
    fig.tight_layout()
    return png(fig)


def charts(summary: dict) -> dict[str, bytes]:
    """The report's PNG charts by file name."""
    out = {"replication.png": replication_chart(summary["replication"], summary["kappa_target"])}
    if summary.get("refresh"):
        out["refresh_curve.png"] = curve_chart(summary["refresh"])
    return out


def render_report(summary: dict, title: str) -> str:
    """report.md of a routing job (its charts are named as :func:`charts` names them)."""
    lines = [f"# {title}", ""]
    decision = summary["decision"]
    lines += [f"**Decision: {decision['status'].upper()}**", ""]
    lines += [f"- {r}" for r in decision["reasons"]] or ["- every guard-rail passed"]
    lines.append("")
    lines += ["## Data", "", "| | rows |", "| --- | --- |", f"| input rows | {summary['input_rows']} |"]
    lines += [f"| {k} | {v} |" for k, v in summary["data"].items()]
    lines += [f"| rejected: {reason} | {count} |" for reason, count in summary["rejected_by_reason"].items()]
    lines.append("")
    if summary.get("true_value"):
        lines += ["## True value (simulator)", "", "| policy | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in summary["true_value"].items()]
        lines.append("")
    models = summary["ope_models"]
    est = models["hp"]
    lines += [
        "## Off-policy evaluation (95% bootstrap intervals)",
        "",
        f"Estimator used: **{est['estimator']}**; IPS trusted: {est['ips_trusted']}"
        + (f" ({'; '.join(est['ips_untrusted_reasons'])})" if est["ips_untrusted_reasons"] else "")
        + f". Current policy's value on these logs: {summary['current_value']:.4f}.",
        "",
        "| metric | RP | LP | HP |",
        "| --- | --- | --- | --- |",
    ]
    for label, key in OPE_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(models[m].get(key)) for m in ("rp", "lp", "hp")) + " |")
    lines += ["", "## Per intent: RPDR and replication", "", f"κ̃ = {summary['kappa_target']}", ""]
    rules = summary.get("rpdr_rules", {})
    rails = {c["name"]: c for c in decision["checks"]}
    lines += ["| intent | n | κ (LP) | RPDR | RPDR rule | RP | LP | HP | guard-rail |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for j, rep in sorted(summary["replication"].items(), key=lambda kv: -kv[1]["n"]):
        lines.append(
            f"| {j} | {rep['n']} | {_fmt(summary['kappa'].get(j))} | {_fmt(summary['rpdr'].get(j))} | "
            f"{_rule(rules.get(j))} | {rep['rp']:.3f} | {rep['lp']:.3f} | {rep['hp']:.3f} | "
            f"{_rail(rails.get(f'replication[{j}]'))} |"
        )
    lines += ["", "![per-intent replication](replication.png)", ""]
    if summary.get("refresh"):
        ref = summary["refresh"]
        lines += ["## Consecutive refreshes (simulation)", "", "| round | HP true value | OPE estimate | decision |"]
        lines += ["| --- | --- | --- | --- |", f"| baseline | {ref['baseline_value']:.4f} | - | - |"]
        for row in ref["rounds"]:
            lines.append(
                f"| HP{row['round']} | {row['hp_true_value']:.4f} | {_fmt(row['ope_estimate'])} | {row['decision']} |"
            )
        corr = ref["calibration"]["correlation"]
        lines += ["", f"OPE estimate vs true value correlation: {_fmt(corr)}", "", "![refresh curve](refresh_curve.png)", ""]
    return "\n".join(lines) + "\n"
