"""Versions from the command line: ``selflearn store ls | show | rollback | enable | disable``.

    selflearn store ls --store URI [NAME]               artifacts, or one artifact's versions
    selflearn store show --store URI NAME [VERSION]     a version's manifest (default: latest)
    selflearn store rollback --store URI NAME [--to V]  move LATEST back one version, or to V
    selflearn store enable|disable --store URI NAME     the artifact's feature flag

The store is any location ``raylib.store.Store`` takes (a path, ``s3://``, ``gs://``).
Rollback moves the store's LATEST pointer, so everything that serves "latest" (a Serve
deployment, a redeploy, a restarted replica) serves the rolled-back version.
"""

from __future__ import annotations

import json
import sys

from raylib import uri
from raylib.job import entrypoint, parser
from raylib.store import Store


def _parse(argv, prog):
    p = parser(prog, __doc__)
    commands = p.add_subparsers(dest="command", required=True, metavar="{ls,show,rollback,enable,disable}")
    for name, text in (("ls", "list artifacts, or one artifact's versions"), ("show", "one version's manifest"),
                       ("rollback", "move LATEST back"), ("enable", "feature flag on"), ("disable", "feature flag off")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--store", required=True, help="store root: a path or a pyarrow.fs URI")
        sub.add_argument("name", nargs="?" if name == "ls" else None, help="artifact name, e.g. rewrites, policy")
        if name == "show":
            sub.add_argument("version", nargs="?", default="latest", help="version id (default: latest)")
        if name == "rollback":
            sub.add_argument("--to", help="version to make latest (default: the one before the current latest)")
    return p.parse_args(argv)


def listing(store: Store, name: str | None) -> dict:
    if name is None:
        return {n: {"latest": store.latest(n), "versions": len(store.versions(n)), "enabled": store.enabled(n)}
                for n in store.names()}
    latest = store.latest(name)
    return {"name": name, "latest": latest, "enabled": store.enabled(name),
            "versions": [{"version": v, "created_at": store.load(name, v).created_at, "latest": v == latest}
                         for v in store.versions(name)]}


@entrypoint
def main(argv=None, prog=None) -> int:
    args = _parse(argv, prog)
    store = Store(uri.absolute(args.store))
    if args.command == "ls":
        out = listing(store, args.name)
    elif args.command == "show":
        art = store.load(args.name, args.version)
        out = {"name": art.name, "version": art.version, "latest": store.latest(art.name), "created_at": art.created_at,
               "enabled": store.enabled(art.name), "files": art.files, "metadata": art.metadata}
    elif args.command == "rollback":
        before = store.latest(args.name)
        out = {"name": args.name, "from": before, "latest": store.rollback(args.name, args.to)}
    else:
        store.set_enabled(args.name, args.command == "enable")
        out = {"name": args.name, "enabled": store.enabled(args.name)}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
