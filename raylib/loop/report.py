"""The loop's report: markdown of its summary and two charts per round (pure: values in,
text and PNG bytes out; the loop writes them)."""

from __future__ import annotations

import json

from raylib.job import png


def number(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; "n/a" for a measurement over nothing (None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def plots(rounds: list[dict]) -> dict[str, bytes]:
    """defect_rate.png and true_reward.png: each round's measurements (see ``raylib.loop.rounds``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> list[float]:
        return [float("nan") if r[key] is None else r[key] for r in rounds]

    x = [r["round"] for r in rounds]
    charts = {}
    for name, title, ylabel, xlabel, lines in (
        ("defect_rate.png", "Defect rate of held-out traffic", "expected defect rate", "round",
         (("defect_rate_without_rewrites", "o--", "as spoken"), ("defect_rate", "o-", "served (rewrites applied)"))),
        ("true_reward.png", "Routing: true reward per round", "true reward of the served router",
         "round (0: logging policy)",
         (("true_reward", "o-", "fixed evaluation set"), ("served_reward", "o--", "the round's own requests"))),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key, style, label in lines:
            ax.plot(x, series(key), style, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.legend()
        ax.set_title(title)
        fig.tight_layout()
        charts[name] = png(fig)
    return charts


def markdown_report(summary: dict, plot_files: list[str]) -> str:
    """The loop's report.md from its summary (``Loop.finish``), linking ``plot_files``."""
    lines = ["# Self-learning loop", "",
             f"Settings: `{json.dumps(summary['settings'], sort_keys=True)}`", "",
             "## Per round (round 0: before self-learning)", "",
             "Defect rates: the expected defect rate of the requests users make (first attempts and follow-ups) "
             "in the round's held-out traffic. True reward: the served router's true value.", "",
             "| round | defect rate (served) | defect rate (as spoken) | rewritten share | true reward "
             "(fixed evaluation set) | true reward (round's requests) | policy | rewrites |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rounds"]:
        lines.append(f"| {r['round']} | {number(r['defect_rate'])} | {number(r['defect_rate_without_rewrites'])} | "
                     f"{number(r['rewritten_share'], 3)} | {number(r['true_reward'])} | {number(r['served_reward'])} | "
                     f"{r['policy_version']} | {r['rewrites_version']} |")
    lines += ["", "## Online A/B and blacklist per round", "",
              f"Observed defect rate of the round's simulated traffic (every non-interjection turn; not a replay): "
              f"treatment (served rewrites) against the holdout ({summary['settings']['holdout_share']:.0%} of "
              "customers by id hash, served none), overall and on the turns whose said utterance has a served "
              "rewrite. Per rewrite, friction with against without it by the two-proportion Z-test at p = 0.01: "
              "wins, losses (blacklisted and withdrawn at once). Stale: rows the served version withdrew when mined.",
              "", "| round | treatment | holdout | reduction | treatment (rewritten sources) | holdout (rewritten "
              "sources) | reduction | rewrites tested | online wins | online losses | blacklisted | withdrawn "
              "as stale |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rounds"]:
        lines.append(f"| {r['round']} | {number(r['treatment_defect_rate'])} | {number(r['holdout_defect_rate'])} | "
                     f"{_percent(r['ab_reduction'])} | {number(r['rewritable_treatment_defect_rate'])} | "
                     f"{number(r['rewritable_holdout_defect_rate'])} | {_percent(r['rewritable_ab_reduction'])} | "
                     f"{r['online_tested']} | {r['online_wins']} | {r['online_losses']} | {r['blacklisted']} | "
                     f"{r['withdrawn_stale']} |")
    reduction = summary["defect_rate_reduction"]
    lines += ["", f"Defect rate before: **{number(summary['defect_rate_before'])}**, after: "
              f"**{number(summary['defect_rate_after'])}** (reduction "
              f"{number(None if reduction is None else 100 * reduction, 1)}%).",
              f"True reward of the router: **{number(summary['true_reward_before'])}** (logging policy) -> "
              f"**{number(summary['true_reward_after'])}** (last round), on a fixed evaluation set of "
              f"{summary['settings']['eval_requests']} requests.", ""]
    lines += [f"![{p}]({p})" for p in plot_files]
    lines += ["", "## PDRFE embeddings as router features", ""] + _features(summary["pdrfe_router_features"])
    lines += ["", "## Refreshes", "", "| after round | policy decision | policy published | rewrites version |",
              "| --- | --- | --- | --- |"]
    for ref in summary["refreshes"]:
        decision = (ref["policy"].get("decision") or {}).get("status")
        lines.append(f"| {ref['round']} | {decision} | {ref['policy']['version'] or 'no'} | "
                     f"{ref['rewrites']['version']} |")
    lines += ["", "## Artifacts (store versions)", ""]
    lines += [f"- `{name}`: {', '.join(v) or 'none'}" for name, v in summary["artifacts"].items()]
    lines.append("- this report and summary are published as the next version of `loop_report`")
    lines += ["", f"Stages run this time: {', '.join(summary['stages']['ran']) or 'none'}; reused: "
              f"{', '.join(summary['stages']['reused']) or 'none'}.", ""]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _features(feats: dict) -> list[str]:
    """The report's section on the PDRFE embeddings as router features."""
    if not feats.get("measured"):
        return [f"Not measured: {feats.get('reason')}."]
    tv = feats["true_value"]
    lines = [f"Method: {feats['method']}; data `{feats['data']}`, production policy "
             f"{feats['production_policy'] or 'the logging policy'}, embeddings {feats['embeddings_version']}. "
             "True values on the trainings' test requests.", "",
             "| policy inputs | RP | LP | HP |", "| --- | --- | --- | --- |"]
    for label, key in (("without embeddings", "without_embeddings"),
                       ("with PDRFE customer/skill embeddings", "with_embeddings")):
        lines.append(f"| {label} | " + " | ".join(number(tv[key][m]) for m in ("rp", "lp", "hp")) + " |")
    added = feats["reward_added"]
    return lines + ["", "Reward added by the embeddings: "
                    + ", ".join(f"{m.upper()} {added[m]:+.4f}" for m in ("rp", "lp", "hp")) + "."]
