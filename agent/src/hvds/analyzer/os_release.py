"""The installed OS, from os-release(5) read out of an ext file system without mounting it."""

from __future__ import annotations

import re

from hvds.analyzer.debugfs import ExtFiles
from hvds.analyzer.report import OsReport

# os-release(5): /etc/os-release first, /usr/lib/os-release when it is absent. On most current
# distributions the former is a relative symlink to the latter, which ExtFiles follows.
CANDIDATES = ("/etc/os-release", "/usr/lib/os-release")
EXT_TYPES = frozenset({"ext2", "ext3", "ext4"})
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines with shell quoting, as os-release(5) specifies; junk lines are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match is not None:  # else a comment, a blank line or garbage
            fields[match.group(1)] = unquote(match.group(2))
    return fields


def unquote(raw: str) -> str:
    """A value as the shell would see it: quotes removed, backslash escapes applied.

    Not shlex: in double quotes os-release(5) escapes $ and ` too, which shlex leaves alone.
    An unterminated quote keeps what follows it rather than losing the whole value.
    """
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(raw):
        c = raw[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                out.append(c)
        elif c == "\\" and i + 1 < len(raw) and (quote is None or raw[i + 1] in '"\\$`'):
            i += 1
            out.append(raw[i])
        elif c == '"':
            quote = None if quote else '"'
        elif c == "'" and quote is None:
            quote = "'"
        elif c.isspace() and quote is None:
            break  # the value ends; a trailing comment may follow
        else:
            out.append(c)
        i += 1
    return "".join(out)


def os_report(fields: dict[str, str], partition: int | None, source: str) -> OsReport:
    def get(key: str) -> str | None:
        return fields.get(key) or None

    return OsReport(
        family="linux",
        # os-release(5): ID defaults to "linux" and NAME to "Linux" when missing.
        id=get("ID") or "linux",
        name=get("NAME") or "Linux",
        version_id=get("VERSION_ID"),
        pretty_name=get("PRETTY_NAME"),
        version_codename=get("VERSION_CODENAME"),
        id_like=get("ID_LIKE"),
        partition=partition,
        source=source,
    )


def read_os_release(files: ExtFiles, partition: int | None) -> OsReport | None:
    """The OS described in this file system, or None when it has no os-release (e.g. /boot).

    Raises DebugfsError when the file system cannot be read.
    """
    for candidate in CANDIDATES:
        found = files.read(candidate)
        if found is not None:
            source, content = found
            return os_report(
                parse_os_release(content.decode("utf-8", errors="replace")), partition, source
            )
    return None
