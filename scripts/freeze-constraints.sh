#!/usr/bin/env bash
# Rewrite constraints.txt from the dev environment (.venv) after a dependency change; torch
# is left out (the CPU and CUDA builds differ; docker/Dockerfile and bootstrap.sh pin it).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  head -n 4 constraints.txt
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -iE "^(torch|pyflakes)=="
} > constraints.txt.new
mv constraints.txt.new constraints.txt
