"""``selflearn``: one subcommand per job. Each job is a module in ``jobs/`` with ``main(argv)``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("jobs.simulate", "write a simulated world's logs and ground truth as Parquet"),
    "mine-rewrites": ("jobs.mine_rewrites", "mine the utterance -> rewrite table (absorbing Markov chain)"),
    "train-pdrfe": ("jobs.train_pdrfe", "train PDRFE customer/skill embeddings and run defect prediction"),
    "train-policy": ("jobs.train_policy", "train the hybrid RP/LP routing policy, evaluate and guard-rail it"),
    "evaluate-policy": ("jobs.evaluate_policy", "off-policy evaluation of a published routing policy"),
    "store": ("jobs.store", "list, show, roll back, enable or disable artifact versions in a store"),
    "serve": ("jobs.serve", "serve the rewrite lookup and the hybrid router on Ray Serve"),
    "demo": ("jobs.self_learning_loop", "the whole self-learning loop end to end on simulated traffic"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="selflearn",
        description="Self-learning for a conversational assistant on Ray. "
        "Run `selflearn <command> --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # --help exits 0; an unknown command exits 2 with its message
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"selflearn {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
