"""``selflearn serve``: deploy ``serve_config.yaml`` on Ray Serve and serve until stopped.

Runs on the embedded local Ray runtime (or the cluster in ``RAY_ADDRESS``), deploys the
packaged config (``serve_apps.deploy``), prints the URL and serves until Ctrl-C / SIGTERM
or ``--duration`` seconds; stopping shuts Serve down, which flushes the decision log.
With the local runtime the HAProxy ingress is switched on (``--ingress proxy`` keeps
Serve's default proxy); on an existing cluster the ingress is whatever it was started with.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import yaml

from raylib.errors import UserError
from raylib.job import ensure_ray, entrypoint
from raylib.job import parser as job_parser
from serve_apps.deploy import deploy, ingress_env, packaged_config, serve_config


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set wants KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else None
    return out


@entrypoint
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = job_parser(prog, __doc__)
    parser.add_argument("--store", help="artifact store root (default: the config's store_root)")
    parser.add_argument("--host", default=None, help="bind address (default: the config's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    parser.add_argument("--config", help="a serve_config.yaml (default: the packaged serve_apps/serve_config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one ServeSettings field, e.g. --set rewrite_backend=redis (repeatable)")
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                        help="local runtime only: HAProxy direct ingress (default) or Serve's default proxy")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    args = parser.parse_args(argv)

    if args.config:
        with open(args.config) as f:
            base = yaml.safe_load(f)
    else:
        base = packaged_config()
    overrides = _parse_set(args.set)
    if args.store:
        overrides["store_root"] = args.store
    config = serve_config(base, overrides, args.host, args.port)

    from ray import serve

    if not os.environ.get("RAY_ADDRESS"):
        os.environ.update(ingress_env(args.ingress))
    ensure_ray()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = deploy(config)
        print(f"serving on {url}  (OpenAPI docs: {url}/docs)", flush=True)
        stop.wait(args.duration if args.duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
