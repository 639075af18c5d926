"""hvds-manager: the site manager.

hvds-manager run --config /etc/hvds/manager.toml
hvds-manager token --config ... --name NAME --role admin|viewer|host [--days N]
hvds-manager migrate --config ...           # bring the database to the newest schema
"""

from __future__ import annotations

import argparse
import datetime
import logging
import ssl
import sys
from pathlib import Path

import uvicorn

from hvds.manager.app import create_app
from hvds.manager.auth import TOKEN_ROLES, create_token
from hvds.manager.config import ManagerConfig, load_config
from hvds.manager.db import Store, utcnow
from hvds.manager.site import SiteManager
from hvds.manager.tls_scope import ClientCertProtocol
from hvds.settings import ConfigError


def open_store(config: ManagerConfig) -> Store:
    config.manager.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(config.manager.database)


def run(config: ManagerConfig) -> None:
    site = SiteManager(config, open_store(config))
    app = create_app(site)
    tls = config.tls
    print("hvds-manager ready", flush=True)
    uvicorn.run(
        app,
        host=config.manager.listen.host,
        port=config.manager.listen.port,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        # Paired sites' managers present the client certificate this site signed for them
        # (decision 0018); everyone else may present none.
        ssl_cert_reqs=ssl.CERT_OPTIONAL if tls else ssl.CERT_NONE,
        ssl_ca_certs=str(site.pairing.ca_path) if tls else None,
        http=ClientCertProtocol,
        log_level="warning",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvds-manager", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "serve the API"),
        ("migrate", "upgrade the database schema"),
        ("token", "make an API token (printed once; only its hash is kept)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path, required=True, help="TOML configuration")
        if name == "token":
            command.add_argument("--name", required=True, help="who or what will use it")
            command.add_argument("--role", required=True, choices=TOKEN_ROLES)
            command.add_argument("--days", type=float, help="expires after N days")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hvds-manager: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        run(config)
    elif args.command == "migrate":
        open_store(config)
    else:
        expires = None if args.days is None else utcnow() + datetime.timedelta(days=args.days)
        print(create_token(open_store(config), args.name, args.role, expires))
    return 0


if __name__ == "__main__":
    sys.exit(main())
