#!/usr/bin/env bash
# Rewrite constraints.txt from the dev environment (.venv) after a dependency change: the
# installed versions of selflearn[dev,mlflow]'s dependency closure only, so a package someone
# pip-installed by hand never becomes a pin. torch is left out (the CPU and CUDA builds differ;
# docker/Dockerfile and bootstrap.sh pin it), nor the packaging tools (setuptools, pip).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  head -n 4 constraints.txt
  .venv/bin/python - <<'PY'
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

seen, todo = {}, [("selflearn", {"dev", "mlflow"})]
while todo:
    name, extras = todo.pop()
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue  # a platform-only dependency (its marker does not hold here)
    key = canonicalize_name(name)
    if extras <= seen.get(key, set()) and key in seen:
        continue
    seen[key] = seen.get(key, set()) | extras
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            todo.append((req.name, set(req.extras)))
for key in sorted(seen):
    if key not in ("selflearn", "torch", "setuptools", "pip"):
        print(f"{metadata.distribution(key).metadata['Name']}=={metadata.version(key)}")
PY
} > constraints.txt.new
mv constraints.txt.new constraints.txt
