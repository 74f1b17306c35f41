"""``selflearn serve``: the rewrite lookup and the hybrid router on Ray Serve.

    selflearn serve [--store URI] [--set KEY=VALUE ...] [--host H] [--port P] [--duration S]
        deploy serve_apps/serve_config.yaml on the embedded local Ray runtime (or the cluster
        in RAY_ADDRESS) and serve until Ctrl-C / SIGTERM or --duration seconds; stopping
        shuts Serve down, which flushes the decision log
    selflearn serve deploy [--address A] --store URI [--set KEY=VALUE ...] [--host H] [--port P]
        deploy the same config on a running cluster and exit; Serve keeps serving it
    selflearn serve status [--address A] [--url URL]
        applications, deployments, replicas by state, and the served versions (GET URL/v1/versions)

``--store`` and ``--set store_root=`` / ``decision_log_dir=`` take local paths (made
absolute) or pyarrow.fs URIs (``s3://bucket/store``); on a cluster use URIs. ``deploy`` and
``status`` print JSON. With the local runtime the HAProxy ingress is switched on
(``--ingress proxy`` keeps Serve's default proxy); on an existing cluster the ingress is
whatever it was started with (serve_apps/README.md, "Run").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

import yaml

from raylib import uri
from raylib.errors import UserError
from raylib.job import ensure_ray, entrypoint
from raylib.job import parser as job_parser
from serve_apps.deploy import base_url, deploy, ingress_env, packaged_config, serve_config, status

SUBCOMMANDS = ("deploy", "status")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set wants KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else None
    return out


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="artifact store root, a path or a URI (default: the config's store_root)")
    parser.add_argument("--host", default=None, help="bind address (default: the config's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    parser.add_argument("--config", help="a serve_config.yaml (default: the packaged serve_apps/serve_config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one ServeSettings field, e.g. --set rewrite_backend=redis (repeatable)")


def _address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "auto",
                        help="the cluster's GCS address (default: $RAY_ADDRESS, else the cluster started on this "
                             "machine with `ray start`)")


def _parse(argv: list[str], prog: str | None) -> tuple[str, argparse.Namespace]:
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "serve"
    if command != "serve":
        argv = argv[1:]
        prog = f"{prog or 'selflearn serve'} {command}"
    parser = job_parser(prog, __doc__)
    if command in ("serve", "deploy"):
        _config_options(parser)
    if command == "serve":
        parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                            help="local runtime only: HAProxy direct ingress (default) or Serve's default proxy")
        parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    else:
        _address_option(parser)
    if command == "deploy":
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for RUNNING (default 300)")
    if command == "status":
        parser.add_argument("--url", default=base_url(packaged_config()),
                            help="the application's base URL, for its served versions (default: the packaged config's)")
    return command, parser.parse_args(argv)


def _config(args: argparse.Namespace) -> dict:
    """The config to deploy: ``--config`` or the packaged one, with ``--set``/``--store``
    merged into the selflearn application's args and ``--host``/``--port`` applied."""
    if args.config:
        base = uri.read_settings(args.config, "Serve config")
    else:
        base = packaged_config()
    overrides = _parse_set(args.set)
    if args.store:
        overrides["store_root"] = args.store
    return serve_config(base, overrides, args.host, args.port)


def _join(address: str) -> None:
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise UserError(f"no Ray cluster to join at {address!r}: {exc}") from exc


def _foreground(args: argparse.Namespace) -> int:
    config = _config(args)
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


@entrypoint
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    command, args = _parse(list(sys.argv[1:] if argv is None else argv), prog)
    if command == "serve":
        return _foreground(args)
    if command == "deploy":
        config = _config(args)
        _join(args.address)
        url = deploy(config, timeout_s=args.timeout)
    else:
        _join(args.address)
        url = args.url
    print(json.dumps(status(url), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
