"""The serving application's settings: the ``args`` of ``serve_apps.app:build``.

One pydantic model so the same names and defaults hold for ``serve_config.yaml``,
``selflearn serve`` and the tests. Unknown keys are an error (a typo in a config must
not silently fall back to a default).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ADMIN_TOKEN_ENV = "SELFLEARN_ADMIN_TOKEN"


def autoscaling(target_ongoing_requests: int) -> dict:
    """The deployments' shared autoscaling policy: 1 to 4 replicas, quick up, slow down."""
    return {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": target_ongoing_requests,
        "upscale_delay_s": 10,
        "downscale_delay_s": 120,
    }


STORE_ENV = "SELFLEARN_STORE"


class ServeSettings(BaseModel):
    """Everything the three deployments need to start.

    ``store_root`` and ``decision_log_dir`` are local paths or ``pyarrow.fs`` URIs (``s3://``,
    ``gs://``; on a cluster, URIs or paths on storage every node shares). ``rewrites_version``
    / ``policy_version`` become the deployments' ``user_config.version``: ``latest`` follows
    the store's ``LATEST`` pointer (re-read every ``latest_poll_s`` seconds: publishes and
    rollbacks are served without a redeploy), a version id pins that version.
    """

    model_config = ConfigDict(extra="forbid")

    store_root: str = Field(default_factory=lambda: os.environ.get(STORE_ENV, "store"))
    rewrites_name: str = "rewrites"
    policy_name: str = "policy"
    rewrites_version: str = "latest"
    policy_version: str = "latest"
    rewrite_backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    flag_poll_s: float = Field(default=5.0, gt=0)  # feature flag re-read interval
    latest_poll_s: float = Field(default=5.0, gt=0)  # LATEST re-read interval (deployments serving latest)
    # None: read SELFLEARN_ADMIN_TOKEN in the ingress replica; unset there -> admin disabled.
    admin_token: str | None = None
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    decision_log_dir: str | None = "decision_log"
    decision_log_max_rows: int = Field(default=50_000, gt=0)
    decision_log_max_age_s: float = Field(default=60.0, gt=0)
    # Every decision is journaled in decision_log_spill_dir (a local directory; None: one in the
    # system's temporary directory) before it is answered; a replica re-sends the journals of
    # dead replicas on its node. Rows held in memory at most (>= decision_log_max_rows); beyond
    # it segments are spilled (read back from their journals). Failed writes are retried with
    # exponential backoff of at most decision_log_retry_max_s (serve_apps/decision_log.py).
    decision_log_max_buffer_rows: int = Field(default=100_000, gt=0)
    decision_log_spill_dir: str | None = None
    decision_log_retry_max_s: float = Field(default=30.0, gt=0)
    router_max_batch_size: int = Field(default=64, ge=1)
    router_batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _decision_log_limits(self) -> "ServeSettings":
        if self.decision_log_max_buffer_rows < self.decision_log_max_rows:
            raise ValueError("decision_log_max_buffer_rows must be at least decision_log_max_rows")
        if self.decision_log_spill_dir is not None and "://" in self.decision_log_spill_dir:
            raise ValueError("decision_log_spill_dir must be a local directory (it keeps rows the log does not take)")
        return self

    def resolved_admin_token(self) -> str | None:
        """The admin token: the explicit setting, else the environment, else None."""
        return self.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
