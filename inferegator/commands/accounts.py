"""`inferegator users ...` and `inferegator keys ...`: manage accounts in the configured store.

The same rules as the accounts API (``api_validation``) apply. Problems are reported in
one line on stderr with exit status 2, never a traceback. A new key's secret is printed
once, alone on the first line of stdout, so scripts can take it with ``head -n1``.
"""

import getpass
import json
import sqlite3
import sys
from datetime import datetime, timezone

from ..errors import GatewayError
from ..store import api_validation as check
from . import DEFAULT_CONFIG, DEFAULT_CONFIG_HELP, load_or_report


class CommandError(Exception):
    """A problem to report on one line, exiting 2."""


def _common(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML configuration naming the storage ({DEFAULT_CONFIG_HELP})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(subparsers) -> None:
    users = subparsers.add_parser("users", help="Create and list users.").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    create = users.add_parser("create", help="Create a user (password from --password, a "
                                             "prompt, or one line of stdin).")
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="at least 12 characters; omit to be prompted")
    create.add_argument("--admin", action="store_true", help="give the user the admin role")
    _common(create)
    create.set_defaults(handler=_run(users_create))
    listing = users.add_parser("list", help="List users.")
    _common(listing)
    listing.set_defaults(handler=_run(users_list))

    keys = subparsers.add_parser("keys", help="Create, list and revoke API keys.") \
        .add_subparsers(dest="action", metavar="ACTION", required=True)
    create = keys.add_parser("create", help="Create an API key; its secret is shown once.")
    create.add_argument("--user", required=True, metavar="EMAIL_OR_ID")
    create.add_argument("--name", default="cli", help="a label for the key (default: cli)")
    create.add_argument("--rpm", type=int, help="requests per minute (default: config's)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: config's)")
    create.add_argument("--budget", type=float, metavar="USD", help="monthly budget in USD")
    create.add_argument("--models", metavar="A,B", help="comma-separated model ids the key "
                                                         "may use (default: all)")
    _common(create)
    create.set_defaults(handler=_run(keys_create))
    listing = keys.add_parser("list", help="List API keys (never their secrets).")
    listing.add_argument("--user", metavar="EMAIL_OR_ID", help="only this user's keys")
    _common(listing)
    listing.set_defaults(handler=_run(keys_list))
    revoke = keys.add_parser("revoke", help="Revoke an API key.")
    revoke.add_argument("key_id", metavar="KEY_ID")
    _common(revoke)
    revoke.set_defaults(handler=_run(keys_revoke))


def _run(action):
    """A handler: open the configured store, run the action, turn failures into exit 2."""
    def handler(args) -> int:

        config = load_or_report(args.config)
        if config is None:
            return 2
        try:
            store = _open(config.storage)
            try:
                action(args, config, store.accounts)
            finally:
                store.close()
        except CommandError as exc:
            print(f"inferegator: {exc}", file=sys.stderr)
            return 2
        except GatewayError as exc:
            print(f"inferegator: {exc.message}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, EOFError):
            print("\ninferegator: aborted", file=sys.stderr)
            return 2
        except _database_errors() as exc:
            print(f"inferegator: storage {config.storage}: {exc}", file=sys.stderr)
            return 2
        return 0
    return handler


def _open(url):
    from ..store.database import StoreError
    from ..store.store import Store

    try:
        return Store(url)
    except (StoreError, *_database_errors()) as exc:
        raise CommandError(f"storage {url}: {exc}") from None


def _database_errors() -> tuple:
    errors = [sqlite3.Error, OSError]
    try:
        import psycopg
        errors.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errors)


def _user(accounts, ident: str) -> dict:
    from ..store.accounts import NotFound

    try:
        return accounts.get_user(ident)
    except NotFound:
        raise CommandError(f"no user {ident!r} (give an email or a user id)") from None


# -- actions ------------------------------------------------------------------------------

def users_create(args, config, accounts) -> None:
    from ..store.accounts import DuplicateEmail

    email = check.email(args.email, "--email")
    password = check.password(_password(args), "--password")
    try:
        user = accounts.create_user(email, password, "admin" if args.admin else "user")
    except DuplicateEmail:
        raise CommandError(f"a user with the email {email!r} exists already") from None
    _show([user], args.json, USER_COLUMNS, single=True)


def _password(args) -> str:
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        first = getpass.getpass("Password (12+ characters): ")
        if getpass.getpass("Repeat password: ") != first:
            raise CommandError("the passwords do not match")
        return first
    line = sys.stdin.readline()
    if not line:
        raise CommandError("no password: give --password, or one line on stdin")
    return line.rstrip("\r\n")


def users_list(args, config, accounts) -> None:
    _show(accounts.list_users(), args.json, USER_COLUMNS)


def keys_create(args, config, accounts) -> None:
    user = _user(accounts, args.user)
    name = check.text(args.name, "--name")
    models = [m.id for m in config.models]
    requested = {"requests_per_minute": (args.rpm, "--rpm"),
                 "tokens_per_minute": (args.tpm, "--tpm"),
                 "monthly_budget_usd": (args.budget, "--budget")}
    limits = {}
    for field, (value, flag) in requested.items():
        if value is not None:
            try:
                limits[field] = check.limit(field, value, models)
            except GatewayError as exc:
                raise CommandError(f"{flag}: {exc.message}") from None
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        try:
            limits["allowed_models"] = check.allowed_models(names, models, "--models")
        except GatewayError as exc:
            raise CommandError(f"{exc.message} (configured: {', '.join(models)})") from None
    secret, record = accounts.create_key(user["id"], name, **limits)
    if args.json:
        print(json.dumps({"key": secret, **record}, indent=2))
        return
    print(secret)
    print(f"id: {record['id']}  user: {user['email']}  name: {record['name']}")
    print("The key is shown only this once: store it now.", file=sys.stderr)


def keys_list(args, config, accounts) -> None:
    user_id = _user(accounts, args.user)["id"] if args.user else None
    _show(accounts.list_keys(user_id), args.json, KEY_COLUMNS)


def keys_revoke(args, config, accounts) -> None:
    from ..store.accounts import NotFound

    try:
        record = accounts.revoke_key(args.key_id)
    except NotFound:
        raise CommandError(f"no API key {args.key_id!r}") from None
    _show([record], args.json, KEY_COLUMNS, single=True)


# -- output -------------------------------------------------------------------------------

def _when(ts) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _limits(limits: dict) -> str:
    shown = [f"rpm={limits['requests_per_minute']}" if limits["requests_per_minute"] else "",
             f"tpm={limits['tokens_per_minute']}" if limits["tokens_per_minute"] else "",
             f"budget=${limits['monthly_budget_usd']:g}"
             if limits["monthly_budget_usd"] is not None else "",
             "models=" + ",".join(limits["allowed_models"]) if limits["allowed_models"] else ""]
    return " ".join(s for s in shown if s) or "defaults"


USER_COLUMNS = (("ID", lambda u: u["id"]), ("EMAIL", lambda u: u["email"]),
                ("ROLE", lambda u: u["role"]), ("CREATED", lambda u: _when(u["created"])),
                ("DISABLED", lambda u: "yes" if u["disabled"] else "no"))
KEY_COLUMNS = (("ID", lambda k: k["id"]), ("USER", lambda k: k["user_id"]),
               ("NAME", lambda k: k["name"]), ("PREFIX", lambda k: k["prefix"]),
               ("CREATED", lambda k: _when(k["created"])),
               ("LAST USED", lambda k: _when(k["last_used"])),
               ("REVOKED", lambda k: "yes" if k["revoked"] else "no"),
               ("LIMITS", lambda k: _limits(k["limits"])))


def _show(records: list[dict], as_json: bool, columns, single: bool = False) -> None:
    if as_json:
        print(json.dumps(records[0] if single else records, indent=2))
        return
    rows = [[title for title, _ in columns]] + [[get(r) for _, get in columns]
                                                for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
