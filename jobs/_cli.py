"""What every job entrypoint shares: one-line errors and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from raylib.errors import UserError


def entrypoint(run: Callable[..., int]) -> Callable[..., int]:
    """Wrap a job's ``main(argv, prog)`` so bad input ends as ``error: ...`` and exit code 2."""

    @functools.wraps(run)
    def main(argv: list[str] | None = None, prog: str | None = None) -> int:
        try:
            return run(argv, prog)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            print(f"error: cannot read input: {exc}", file=sys.stderr)
            return 2

    return main
