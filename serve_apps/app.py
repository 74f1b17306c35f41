"""The Serve application: ``Ingress`` -> (``RewriteLookup``, ``HybridRouter``).

``build(args)`` is the application builder named in ``serve_config.yaml``
(``import_path: serve_apps.app:build``, ``args`` = ``ServeSettings`` fields);
``app`` is the same application with default settings, for ``serve build serve_apps.app:app``.
"""

from __future__ import annotations

from ray.serve import Application

from serve_apps.hybrid_router import HybridRouter
from serve_apps.ingress import Ingress
from serve_apps.rewrite_lookup import RewriteLookup
from serve_apps.settings import ServeSettings


def build(args: dict) -> Application:
    """The application for ``args`` (``ServeSettings`` fields; unknown keys are an error)."""
    settings = ServeSettings(**args)
    lookup = RewriteLookup.options(user_config={"version": settings.rewrites_version}).bind(
        settings.store_root, settings.rewrites_name, settings.rewrite_backend, settings.redis_url,
        settings.flag_poll_s, settings.latest_poll_s,
    )
    router = HybridRouter.options(
        user_config={
            "version": settings.policy_version,
            "max_batch_size": settings.router_max_batch_size,
            "batch_wait_timeout_s": settings.router_batch_wait_timeout_s,
        }
    ).bind(settings.model_dump())
    return Ingress.bind(lookup, router, settings.model_dump())


app = build({})
