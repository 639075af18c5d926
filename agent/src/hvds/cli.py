"""hvds: the site manager's API from a shell.

    hvds [--url URL] [--token TOKEN] [--ca PEM] [--json] COMMAND ...

    hvds site                                   identity, health and alerts
    hvds hosts                                  the site's hypervisors
    hvds vpgs list | get NAME | create -f FILE | delete NAME
    hvds checkpoints list VPG | create VPG --tag TAG [--description TEXT]
    hvds commands list [--vpg NAME] [--all] | get ID | cancel ID | watch ID
    hvds test start VPG [--tag TAG | --checkpoint ID] [--no-wait] | stop VPG [--no-wait]
    hvds failover start VPG [--tag TAG | --checkpoint ID] [--auto-commit SECONDS]
    hvds failover commit VPG | rollback VPG
    hvds move VPG | reverse VPG               a planned move; protect back after a commit
    hvds restore VPG DISK --datastore DS --name NAME [--tag TAG | --checkpoint ID]
    hvds logs collect [-o FILE] [--no-wait]

--url, --token and --ca default to $HVDS_URL, $HVDS_TOKEN and $HVDS_CA. Tables by default;
--json prints the API's JSON as it came. A command that starts a tracked command follows it to
its end with a progress bar (unless --no-wait); the exit status is then 0 only if it succeeded.
Exit status 1: the API refused or the command failed; 2: a usage error or no manager reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

ENDED = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.5


class ApiError(Exception):
    """The manager answered with an error: its status and its ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class Api:
    """The manager's API under ``/api/v1``, with a bearer token."""

    def __init__(self, url: str, token: str, ca: str | None, timeout: float = 60) -> None:
        verify: ssl.SSLContext | bool = True
        if ca:
            verify = ssl.create_default_context(cafile=ca)
        self._client = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1", verify=verify, timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip

    def request(self, method: str, path: str, json_body: Any = None) -> httpx.Response:
        response = self._client.request(method, path, json=json_body)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail if isinstance(detail, str) else
                           json.dumps(detail))  # fmt: skip
        return response

    def call(self, method: str, path: str, json_body: Any = None) -> Any:
        response = self.request(method, path, json_body)
        return None if response.status_code == 204 else response.json()

    def pages(self, path: str) -> Iterator[Any]:
        """Every item of a paged list, following its ``Link: rel="next"``."""
        next_path: str | None = path
        while next_path is not None:
            response = self.request("GET", next_path)
            yield from response.json()
            link = response.links.get("next")
            next_path = link["url"].removeprefix("/api/v1") if link else None

    def close(self) -> None:
        self._client.close()


# -- output -----------------------------------------------------------------------------------


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(soft_wrap=False, highlight=False)
        self.errors = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2))

    def table(self, title: str | None, columns: Sequence[str], rows: Iterator[Sequence[Any]]
              ) -> None:  # fmt: skip
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(value) for value in row))
        self.console.print(table)

    def fields(self, title: str, values: dict[str, Any]) -> None:
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in values.items():
            table.add_row(key, _cell(value))
        self.console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def when(text: str | None) -> str:
    """An API time (RFC 3339, UTC) as local time to the second."""
    if not text:
        return "-"
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- commands ---------------------------------------------------------------------------------

Handler = Callable[[Api, Output, argparse.Namespace], int]


def site(api: Api, out: Output, _args: argparse.Namespace) -> int:
    answer = api.call("GET", "/site")
    if out.as_json:
        out.json(answer)
        return 0
    health = answer["health"]
    out.fields(f"site {answer['name']}", {
        "version": answer["version"], "health": health["status"],
        "hosts up": health["hosts_up"], "hosts down": health["hosts_down"],
    })  # fmt: skip
    if health["alerts"]:
        out.table("alerts", ["KIND", "SUBJECT", "MESSAGE"],
                  ((a["kind"], a["subject"], a["message"]) for a in health["alerts"]))  # fmt: skip
    return 0


def hosts(api: Api, out: Output, _args: argparse.Namespace) -> int:
    answer = api.call("GET", "/hosts")
    if out.as_json:
        out.json(answer)
        return 0
    out.table(None, ["NAME", "STATE", "VERSION", "LAST SEEN", "DISKS", "DATASTORES", "VPGS"], (
        (h["name"], h["state"], h["version"], when(h["last_seen"]), len(h["exports"]),
         ", ".join(d["name"] for d in h["datastores"]),
         ", ".join(sorted({*h["vpgs"].get("sources", {}), *h["vpgs"].get("targets", {})})))
        for h in answer
    ))  # fmt: skip
    return 0


def vpg_row(vpg: dict[str, Any]) -> tuple[Any, ...]:
    disks = sum(len(vm["disks"]) for vm in vpg["vms"])
    targets = ", ".join(f"{t['site']}/{t['host']}/{t['datastore']}" for t in vpg["targets"])
    return (vpg["name"], vpg["state"], vpg["rpo_seconds"], len(vpg["vms"]), disks, targets)


def vpgs(api: Api, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        listed = list(api.pages(f"/vpgs?limit={args.page_size}"))
        if out.as_json:
            out.json(listed)
        else:
            out.table(None, ["NAME", "STATE", "RPO S", "VMS", "DISKS", "TARGETS"],
                      (vpg_row(vpg) for vpg in listed))  # fmt: skip
        return 0
    if args.action == "delete":
        api.call("DELETE", f"/vpgs/{args.name}")
        out.console.print(f"VPG {args.name} deleted")
        return 0
    if args.action == "create":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        vpg = api.call("POST", "/vpgs", json.loads(text))
    else:
        vpg = api.call("GET", f"/vpgs/{args.name}")
    if out.as_json:
        out.json(vpg)
        return 0
    settings = {key: value for key, value in vpg.items() if key not in ("name", "vms", "targets")}
    for stamp in ("created_at", "updated_at"):
        settings[stamp] = when(settings[stamp])
    out.fields(f"VPG {vpg['name']}", settings)
    out.table(
        "disks",
        ["VM", "HOST", "DISK"],
        ((vm["name"], vm["host"], d["export"]) for vm in vpg["vms"] for d in vm["disks"]),
    )
    out.table("targets", ["SITE", "HOST", "DATASTORE"],
              ((t["site"], t["host"], t["datastore"]) for t in vpg["targets"]))  # fmt: skip
    return 0


def checkpoints(api: Api, out: Output, args: argparse.Namespace) -> int:
    path = f"/vpgs/{args.vpg}/checkpoints"
    if args.action == "create":
        taken = [api.call("POST", path, {"tag": args.tag, "description": args.description})]
    else:
        taken = api.call("GET", path)
    if out.as_json:
        out.json(taken[0] if args.action == "create" else taken)
        return 0
    out.table(
        None,
        ["ID", "TIME", "TAG", "DESCRIPTION"],
        ((c["id"], when(c["time"]), c["tag"], c["description"]) for c in taken),
    )
    return 0


def command_rows(listed: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    for c in listed:
        yield (c["id"], c["kind"], c["vpg"], c["status"], f"{c['progress']}%",
               when(c["started_at"]), when(c["ended_at"]), c["error"])  # fmt: skip


def show_command(out: Output, command: dict[str, Any]) -> None:
    if out.as_json:
        out.json(command)
        return
    out.table(None, ["ID", "KIND", "VPG", "STATUS", "PROGRESS", "STARTED", "ENDED", "ERROR"],
              command_rows([command]))  # fmt: skip
    if command["result"]:
        out.console.print(json.dumps(command["result"], indent=2))


def watch(api: Api, out: Output, command: dict[str, Any]) -> int:
    """Follow a tracked command to its end with a progress bar; 0 if it succeeded."""
    label = f"{command['kind']} {command['vpg'] or ''}".strip()
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=out.errors, transient=False) as bar:
        task = bar.add_task(label, total=100, completed=command["progress"],
                            status=command["status"])  # fmt: skip
        while command["status"] not in ENDED:
            time.sleep(POLL_SECONDS)
            command = api.call("GET", f"/commands/{command['id']}")
            bar.update(task, completed=command["progress"], status=command["status"])
    show_command(out, command)
    return 0 if command["status"] == "succeeded" else 1


def started(api: Api, out: Output, args: argparse.Namespace, command: dict[str, Any]) -> int:
    if args.no_wait:
        show_command(out, command)
        return 0
    return watch(api, out, command)


def commands(api: Api, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        path = f"/commands?limit={args.page_size}" + (f"&vpg={args.vpg}" if args.vpg else "")
        listed = list(api.pages(path)) if args.all else api.call("GET", path)
        if out.as_json:
            out.json(listed)
        else:
            out.table(None, ["ID", "KIND", "VPG", "STATUS", "PROGRESS", "STARTED", "ENDED",
                             "ERROR"], command_rows(listed))  # fmt: skip
        return 0
    if args.action == "cancel":
        command = api.call("POST", f"/commands/{args.id}/cancel")
    else:
        command = api.call("GET", f"/commands/{args.id}")
    if args.action == "watch":
        return watch(api, out, command)
    show_command(out, command)
    return 0


def test(api: Api, out: Output, args: argparse.Namespace) -> int:
    path = f"/vpgs/{args.vpg}/failover-test"
    if args.action == "stop":
        return started(api, out, args, api.call("DELETE", path))
    choice = {"tag": args.tag, "checkpoint": args.checkpoint}
    return started(api, out, args, api.call("POST", path, choice))


def failover(api: Api, out: Output, args: argparse.Namespace) -> int:
    path = f"/vpgs/{args.vpg}/failover"
    if args.action == "start":
        body = {"tag": args.tag, "checkpoint": args.checkpoint,
                "auto_commit_seconds": args.auto_commit}  # fmt: skip
        return started(api, out, args, api.call("POST", path, body))
    return started(api, out, args, api.call("POST", f"{path}/{args.action}"))


def vpg_operation(api: Api, out: Output, args: argparse.Namespace) -> int:
    """move and reverse: one POST on the VPG, a tracked command."""
    path = {"move": "move", "reverse": "reverse-protection"}[args.command]
    return started(api, out, args, api.call("POST", f"/vpgs/{args.vpg}/{path}"))


def restore(api: Api, out: Output, args: argparse.Namespace) -> int:
    body = {"disk": args.disk, "datastore": args.datastore, "name": args.name,
            "tag": args.tag, "checkpoint": args.checkpoint}  # fmt: skip
    return started(api, out, args, api.call("POST", f"/vpgs/{args.vpg}/restore", body))


def _checkpoint_choice(command: argparse.ArgumentParser) -> None:
    which = command.add_mutually_exclusive_group()
    which.add_argument("--tag", help="the newest checkpoint with this tag")
    which.add_argument("--checkpoint", type=int, help="a checkpoint id (default: the latest)")


def logs(api: Api, out: Output, args: argparse.Namespace) -> int:
    command = api.call("POST", "/logs")
    if args.no_wait:
        show_command(out, command)
        return 0
    if watch(api, out, command) != 0:
        return 1
    target = Path(args.output or f"hvds-logs-{command['id']}.tar.gz")
    target.write_bytes(api.request("GET", f"/commands/{command['id']}/bundle").content)
    out.errors.print(f"bundle written to {target}")
    return 0


# -- arguments --------------------------------------------------------------------------------


def _recovery_parsers(sub: Any) -> None:
    """failover, move, reverse and restore."""
    over = sub.add_parser("failover", help="live failover").add_subparsers(
        dest="action", required=True
    )
    begin = over.add_parser("start", help="fail over to a checkpoint (default: the latest)")
    begin.add_argument("vpg")
    _checkpoint_choice(begin)
    begin.add_argument("--auto-commit", type=float, metavar="SECONDS",
                       help="commit on its own after this long unless rolled back")  # fmt: skip
    for name in ("commit", "rollback"):
        over.add_parser(name).add_argument("vpg")
    for action in over.choices.values():
        action.add_argument("--no-wait", action="store_true", help="do not follow the command")
        action.set_defaults(run=failover)
    for name, text in (
        ("move", "a planned move: last checkpoint, failover, commit"),
        ("reverse", "after a commit, protect the VPG back to its old site"),
    ):
        operation = sub.add_parser(name, help=text)
        operation.add_argument("vpg")
        operation.add_argument("--no-wait", action="store_true", help="do not follow it")
        operation.set_defaults(run=vpg_operation)
    back = sub.add_parser("restore", help="a disk at a checkpoint, copied to a datastore")
    back.add_argument("vpg")
    back.add_argument("disk")
    back.add_argument("--datastore", required=True)
    back.add_argument("--name", required=True, help="the image: <datastore>/restores/NAME.raw")
    _checkpoint_choice(back)
    back.add_argument("--no-wait", action="store_true", help="do not follow the command")
    back.set_defaults(run=restore)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="hvds", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    main.add_argument("--url", default=os.environ.get("HVDS_URL"),
                      help="the site manager, https://HOST:PORT ($HVDS_URL)")  # fmt: skip
    main.add_argument("--token", default=os.environ.get("HVDS_TOKEN"),
                      help="an API token ($HVDS_TOKEN)")  # fmt: skip
    main.add_argument(
        "--ca",
        default=os.environ.get("HVDS_CA"),
        help="PEM CA the manager's certificate is checked against ($HVDS_CA)",
    )
    main.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = main.add_subparsers(dest="command", required=True)
    sub.add_parser("site", help="identity, health and alerts").set_defaults(run=site)
    sub.add_parser("hosts", help="the site's hypervisors").set_defaults(run=hosts)

    vpg = sub.add_parser("vpgs", help="protection groups").add_subparsers(
        dest="action", required=True
    )
    listing = vpg.add_parser("list")
    listing.add_argument("--page-size", type=int, default=100, help=argparse.SUPPRESS)
    vpg.add_parser("get").add_argument("name")
    vpg.add_parser("delete").add_argument("name")
    vpg.add_parser("create").add_argument(
        "-f", "--file", required=True, help="the VPG's settings, JSON (- for stdin)"
    )
    for action in vpg.choices.values():
        action.set_defaults(run=vpgs)

    checkpoint = sub.add_parser("checkpoints", help="a VPG's checkpoints").add_subparsers(
        dest="action", required=True)  # fmt: skip
    checkpoint.add_parser("list").add_argument("vpg")
    create = checkpoint.add_parser("create")
    create.add_argument("vpg")
    create.add_argument("--tag", required=True)
    create.add_argument("--description", default="")
    for action in checkpoint.choices.values():
        action.set_defaults(run=checkpoints)

    command = sub.add_parser("commands", help="tracked commands").add_subparsers(
        dest="action", required=True)  # fmt: skip
    listing = command.add_parser("list", help="newest first, one page (--all: every one)")
    listing.add_argument("--vpg")
    listing.add_argument("--all", action="store_true")
    listing.add_argument("--page-size", type=int, default=100, help="commands a page")
    for name in ("get", "cancel", "watch"):
        command.add_parser(name).add_argument("id", type=int)
    for action in command.choices.values():
        action.set_defaults(run=commands)

    tests = sub.add_parser("test", help="failover tests").add_subparsers(
        dest="action", required=True
    )
    start = tests.add_parser("start", help="views of a checkpoint (default: the latest)")
    start.add_argument("vpg")
    _checkpoint_choice(start)
    tests.add_parser("stop").add_argument("vpg")
    for action in tests.choices.values():
        action.add_argument("--no-wait", action="store_true", help="do not follow the command")
        action.set_defaults(run=test)

    _recovery_parsers(sub)

    log = sub.add_parser("logs", help="log bundles").add_subparsers(dest="action", required=True)
    collect = log.add_parser("collect", help="collect and download a bundle (tar.gz)")
    collect.add_argument("-o", "--output", help="default: hvds-logs-<command id>.tar.gz")
    collect.add_argument("--no-wait", action="store_true", help="only start the collection")
    collect.set_defaults(run=logs)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Output(args.json)
    if not args.url or not args.token:
        out.errors.print("hvds: a manager URL and a token are needed (--url/--token or "
                         "HVDS_URL/HVDS_TOKEN)")  # fmt: skip
        return 2
    api = Api(args.url, args.token, args.ca)
    run: Handler = args.run
    try:
        return run(api, out, args)
    except ApiError as exc:
        out.errors.print(f"hvds: {exc}", markup=False)
        return 1
    except (httpx.TransportError, OSError) as exc:
        out.errors.print(f"hvds: cannot reach {args.url}: {exc}", markup=False)
        return 2
    except (ValueError, KeyError) as exc:  # a file that is not JSON, an answer not as expected
        out.errors.print(f"hvds: {exc}", markup=False)
        return 1
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
