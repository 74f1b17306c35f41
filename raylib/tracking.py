"""Experiment tracking (optional: the ``mlflow`` extra).

When a job runs with ``--tracking-uri`` (or ``MLFLOW_TRACKING_URI`` in its environment),
:func:`track` records it as one MLflow run in ``--experiment``: the job's arguments as
parameters, every finite number of its summary as a metric (nested keys joined by ``.``;
the ``MAX_METRICS`` least nested ones, so the common summary keys always are),
summary.json, report.md and the charts as artifacts, and as tags the job, its exit
code, the published store version and the store's latest version of every artifact, and
the guard-rail decision when there is one. A routing policy that passed its guard-rails
and was published is also registered as a model version (its store files as the run's
artifacts under ``policy/``) and the ``alias`` is moved to it.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

MAX_METRICS = 500
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metrics_of(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number in ``summary`` (booleans left out), keyed by its dotted path with
    characters MLflow does not accept replaced by ``_``."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = _UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, dict):
            out.update(metrics_of(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def params_of(args: dict) -> dict[str, str]:
    """A job's arguments as MLflow parameters (strings, at most 500 characters each)."""
    return {k: (json.dumps(v, default=str) if not isinstance(v, str) else v)[:500] for k, v in args.items()}


def track(tracking_uri: str, experiment: str, job: str, params: dict, summary: dict, files: dict[str, bytes],
          tags: dict[str, str], register: tuple[str, str, dict[str, bytes]] | None = None) -> str:
    """Log one job run (see the module docstring); returns the MLflow run id. ``register``
    is (model name, alias, the policy's files) for a released policy."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=job) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params_of(params))
        shallow_first = sorted(metrics_of(summary).items(), key=lambda kv: kv[0].count("."))
        mlflow.log_metrics(dict(shallow_first[:MAX_METRICS]))
        mlflow.set_tags({"job": job, **tags})
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
            mlflow.log_artifact(str(Path(tmp) / name))
        if register is not None:
            model, alias, policy_files = register
            folder = Path(tmp) / "policy"
            folder.mkdir()
            for name, data in policy_files.items():
                (folder / name).write_bytes(data)
            mlflow.log_artifacts(str(folder), artifact_path="policy")
            client = MlflowClient()
            if not client.search_registered_models(filter_string=f"name = '{model}'"):
                client.create_registered_model(model)
            version = client.create_model_version(model, f"{run.info.artifact_uri}/policy", run.info.run_id,
                                                  tags={"store_version": tags.get("published_version", "")})
            client.set_registered_model_alias(model, alias, version.version)
        return run.info.run_id
