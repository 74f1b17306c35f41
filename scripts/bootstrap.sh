#!/usr/bin/env bash
# Create .venv if missing and install the project into it: torch 2.13.0 (CPU) first, then
# the package with its dev and mlflow extras at the versions of constraints.txt (the ones
# the tests ran with). `bootstrap.sh test` also makes sure Debian's redis-server is present
# (the Redis-backed rewrite store is tested against it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,mlflow]"
if [ "${1:-}" = "test" ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "bootstrap: could not install redis-server; Redis tests will be skipped" >&2
  else
    echo "bootstrap: redis-server missing and not root; Redis tests will be skipped" >&2
  fi
fi
