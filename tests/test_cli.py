"""The ``selflearn`` console script: one subcommand per job, helpful errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.cli import COMMANDS


def run(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True)


def test_help_lists_every_job():
    proc = run("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


def test_no_command_prints_usage_and_fails():
    proc = run()
    assert proc.returncode == 2 and "usage: selflearn" in proc.stderr


def test_unknown_command_is_one_line_error():
    proc = run("bogus")
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"selflearn {command}" in proc.stdout
