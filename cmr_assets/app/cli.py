"""`cmr-assets serve-labelling` and `cmr-assets annotators add|list|disable`.

Public API:
- `register_cli(subparsers)` - adds the subcommands to the console script's argparse subparsers;
  every handler takes the parsed args (`set_defaults(func=...)`) and returns an exit code.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys

from cmr_assets.labelling.roster import RosterError, add_annotator, disable_annotator, load_roster, roster_path
from cmr_assets.settings import DEFAULT_HOURS_PER_ANNOTATOR, DataPaths

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve-labelling` and `annotators {add,list,disable}` to `subparsers`."""
    serve = subparsers.add_parser("serve-labelling", help="run the labelling web app for annotators",
                                  description="Serve the ranking and single-image labelling pages. "
                                              "Binds to loopback unless --host says otherwise.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--budget-hours", type=float, default=DEFAULT_HOURS_PER_ANNOTATOR,
                       help="labelling time per annotator and strategy, shown against the time used "
                            f"(default {DEFAULT_HOURS_PER_ANNOTATOR:g}, as in the campaign design)")
    serve.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                       help="address or network (e.g. 127.0.0.1, 10.0.0.0/8) of a reverse proxy whose "
                            "X-Forwarded-For names the real client; repeatable. Without it the TCP peer "
                            "is the client and forwarded headers are ignored")
    serve.set_defaults(func=serve_labelling)

    annotators = subparsers.add_parser("annotators", help="manage the annotator roster",
                                       description="Manage who may log in to the labelling app.")
    actions = annotators.add_subparsers(dest="annotators_action", required=True)
    add = actions.add_parser("add", help="register an annotator (asks for a password)")
    add.add_argument("name", help="annotator id: lower-case letters, digits, '_' or '-'")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(func=annotators_add)
    listing = actions.add_parser("list", help="list annotators and whether they are active")
    listing.set_defaults(func=annotators_list)
    disable = actions.add_parser("disable", help="stop an annotator from logging in (their work is kept)")
    disable.add_argument("name")
    disable.set_defaults(func=annotators_disable)


def allowed_hosts_for(host: str) -> tuple[str, ...]:
    """Host headers to accept: loopback names, plus the bound address; any for a wildcard bind."""
    if host in ("0.0.0.0", "::"):
        return ("*",)
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, host)))


def serve_labelling(args: argparse.Namespace) -> int:
    import uvicorn

    from cmr_assets.app.web import AppConfig, create_app

    paths = DataPaths.default()
    paths.annotations_incoming.mkdir(parents=True, exist_ok=True)
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"warning: serving on {args.host}, reachable from other machines; sessions travel over plain "
              "HTTP unless a TLS proxy is in front", file=sys.stderr)
    if not load_roster(paths):
        print(f"note: no annotators in {roster_path(paths)} yet; add one with "
              "`cmr-assets annotators add NAME`", file=sys.stderr)
    for proxy in args.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            print(f"error: --trusted-proxy {proxy!r} is not an IP address or network", file=sys.stderr)
            return 2
    config = AppConfig(paths, budget_s=args.budget_hours * 3600, allowed_hosts=allowed_hosts_for(args.host),
                       trusted_proxies=tuple(args.trusted_proxy))
    print(f"labelling app on http://{args.host}:{args.port}/ (data dir {paths.root})", file=sys.stderr)
    # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 by default;
    # the app's ClientAddress middleware applies --trusted-proxy instead, and nothing else.
    uvicorn.run(create_app(config), host=args.host, port=args.port, workers=1, log_level="info",
                proxy_headers=False)
    return 0


def annotators_add(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("error: the passwords differ", file=sys.stderr)
            return 2
    try:
        add_annotator(DataPaths.default(), args.name, password)
    except RosterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"added annotator {args.name}")
    return 0


def annotators_list(args: argparse.Namespace) -> int:
    try:
        roster = load_roster(DataPaths.default())
    except RosterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for account in sorted(roster.values(), key=lambda a: a.name):
        status = "active" if account.active else f"disabled {account.disabled_at}"
        print(f"{account.name}\t{status}\tcreated {account.created_at}")
    return 0


def annotators_disable(args: argparse.Namespace) -> int:
    try:
        disable_annotator(DataPaths.default(), args.name)
    except RosterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"disabled annotator {args.name}")
    return 0
