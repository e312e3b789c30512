"""The ``geopush`` command: serve, run workers, migrate, manage agencies, demo, dev."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from server.logs import configure_logging
from server.settings import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"geopush: {exc}")


def cmd_migrate(_: argparse.Namespace) -> None:
    from server.store.migrate import migrate

    applied = asyncio.run(migrate(_settings().database_url))
    print(f"{len(applied)} migration(s) applied" if applied else "schema is up to date")


def cmd_serve(_: argparse.Namespace) -> None:
    from aiohttp import web

    from server.web.app import create_app

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(create_app(settings), host=settings.http_host, port=settings.http_port,
                reuse_port=settings.http_reuse_port or None, print=None, access_log=None)


def cmd_worker(args: argparse.Namespace) -> None:
    from workers.runner import run_worker

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        run_worker(settings, args.kind)
    except ConfigError as exc:
        sys.exit(f"geopush: {exc}")


def cmd_agency_create(args: argparse.Namespace) -> None:
    from server.agencies import create_agency_with_secret
    from server.domain.errors import ValidationFailed

    call_types = json.loads(Path(args.call_types).read_text()) if args.call_types else {}
    try:
        secret = asyncio.run(create_agency_with_secret(
            _settings().database_url, agency_id=args.id, name=args.name,
            timezone=args.timezone, call_types=call_types, review=args.review,
        ))
    except ValidationFailed as exc:
        sys.exit("geopush: " + "; ".join(f"{e.field}: {e.message}" for e in exc.errors))
    except ValueError as exc:
        sys.exit(f"geopush: {exc}")
    # Shown once, on stdout only; it is never logged.
    print(json.dumps({"id": args.id, "secret": secret}))


def cmd_user_create(args: argparse.Namespace) -> None:
    import getpass

    from server.web.problems import Problem, ValidationFailed
    from server.web.routes.users import create_user_offline

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            sys.exit("geopush: the passwords differ")
    try:
        name = asyncio.run(create_user_offline(
            _settings().database_url, agency_id=args.agency, username=args.username,
            password=password, role=args.role))
    except ValidationFailed as exc:
        sys.exit("geopush: " + "; ".join(f"{e.field}: {e.message}" for e in exc.errors))
    except Problem as exc:
        sys.exit(f"geopush: {exc.detail or exc.title}")
    print(json.dumps({"username": name, "agency_id": args.agency, "role": args.role}))


def cmd_demo(args: argparse.Namespace) -> None:
    from server.dev import demo

    if args.demo_command == "load":
        settings = _settings()
        if not settings.admin_token:
            sys.exit("geopush: GEOPUSH_ADMIN_TOKEN is needed to create the demo agency")
        url = args.url or f"http://127.0.0.1:{settings.http_port}"
        demo.load(Path(args.state), url, settings.admin_token)
    else:
        demo.post_incident(Path(args.state), base_url=args.url, call_type=args.call_type,
                           lat=args.lat, lon=args.lon)


def cmd_loadtest_setup(args: argparse.Namespace) -> None:
    from server.dev.loadtest import setup

    token_file = Path(".geopush/admin-token")
    token = args.admin_token or (token_file.read_text().strip() if token_file.exists() else "")
    if not token:
        sys.exit("geopush: pass --admin-token (make run keeps it in .geopush/admin-token)")
    state = setup(Path(args.state), args.url, token, devices=args.devices)
    print(f"load-test agency {state['agency']!r} with {len(state['devices'])} phones; "
          f"state in {args.state}")


def cmd_cad_validate(args: argparse.Namespace) -> None:
    from server.cadvalidate import validate_file

    try:
        code, output = validate_file(
            Path(args.file), fmt=args.format, agency_id=args.agency,
            call_types_file=Path(args.call_types) if args.call_types else None, now=args.now)
    except (OSError, ValueError, ConfigError) as exc:
        sys.exit(f"geopush: {exc}")
    print(output)
    sys.exit(code)


def cmd_dev(_: argparse.Namespace) -> None:
    try:
        from server.dev.devrun import run
    except ImportError as exc:   # a production install has no development tools
        sys.exit(f"geopush dev needs the development extras (pip install 'geopush[dev]'): {exc}")

    sys.exit(run(Path.cwd()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="geopush", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)
    sub.add_parser("serve", help="run the web server").set_defaults(fn=cmd_serve)
    w = sub.add_parser("worker", help="run one worker process")
    w.add_argument("kind", choices=["matcher", "apns", "fcm", "relay"])
    w.set_defaults(fn=cmd_worker)

    agency = sub.add_parser("agency", help="manage agencies").add_subparsers(
        dest="agency_command", required=True)
    create = agency.add_parser("create", help="create an agency and print its secret once")
    create.add_argument("--id", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--timezone", default="UTC")
    create.add_argument("--call-types", help="JSON file mapping call types to categories")
    create.add_argument("--review", action="store_true", help="hold alerts for review")
    create.set_defaults(fn=cmd_agency_create)

    user = sub.add_parser("user", help="manage editor accounts").add_subparsers(
        dest="user_command", required=True)
    ucreate = user.add_parser("create", help="create an editor or agency admin account")
    ucreate.add_argument("--agency", required=True)
    ucreate.add_argument("--username", required=True)
    ucreate.add_argument("--role", choices=["editor", "agency_admin"], default="editor")
    ucreate.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of stdin (no prompt)")
    ucreate.set_defaults(fn=cmd_user_create)

    d = sub.add_parser("demo", help="the demo of make run").add_subparsers(
        dest="demo_command", required=True)
    for name, text in (("load", "create the demo agency and devices"),
                       ("incident", "post a signed demo incident and show the pushes")):
        p = d.add_parser(name, help=text)
        p.add_argument("--state", default=".geopush/demo.json")
        p.add_argument("--url", default=None,
                       help="server URL (default: the one the demo was loaded on)")
        if name == "incident":
            p.add_argument("--call-type", default="Fire in Building")
            p.add_argument("--lat", type=float, default=None)
            p.add_argument("--lon", type=float, default=None)
        p.set_defaults(fn=cmd_demo)

    lt = sub.add_parser("loadtest", help="the Locust load test's agency and phones"
                        ).add_subparsers(dest="loadtest_command", required=True)
    lts = lt.add_parser("setup", help="create the load-test agency (a rate limit that fits) "
                        "and phones; reused while it matches the database")
    lts.add_argument("--url", default="http://127.0.0.1:8080")
    lts.add_argument("--state", default=".geopush/loadtest.json")
    lts.add_argument("--devices", type=int, default=200)
    lts.add_argument("--admin-token", default=None,
                     help="default: the contents of .geopush/admin-token")
    lts.set_defaults(fn=cmd_loadtest_setup)

    cad = sub.add_parser("cad", help="tools for CAD integrations").add_subparsers(
        dest="cad_command", required=True)
    v = cad.add_parser(
        "validate", help="what geopush would do with a CAD message, offline; exit 1 if refused",
        description="Prints the dry run's analysis (JSON) of FILE, or the problem+json the "
                    "webhook would answer; exit code 0 when accepted, 1 when refused.")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--format", choices=["json", "cap", "eido"], default=None,
                   help="default: .xml is cap; .json is eido when it has incidentComponent, "
                        "else json")
    source = v.add_mutually_exclusive_group()
    source.add_argument("--agency", metavar="ID",
                        help="use this agency's call-type map and policy (reads "
                             "GEOPUSH_DATABASE_URL)")
    source.add_argument("--call-types", metavar="MAP.json",
                        help="a call-type map (e.g. "
                             "server/examples/call-types/seattle-fire.json) with the default "
                             "policy, no database needed")
    v.add_argument("--now", default=None, metavar="TIME",
                   help="judge as of this RFC 3339 time (default: now), e.g. for fixed "
                        "test files in CI")
    v.set_defaults(fn=cmd_cad_validate)

    sub.add_parser("dev", help="what `make run` runs: services, migrations, all processes, demo"
                   ).set_defaults(fn=cmd_dev)

    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
