"""Generators of bad input for the VDSA's control socket (one JSON request per line) and for the
tap's configuration files (its TOML file and the drop-ins of ``exports_dir``), for
tests/integration/test_fuzz_control.py and test_fuzz_tap_config.py.

Control requests: every op with each of its fields valid, missing, of a wrong type, or a
hostile value (names that climb out of a directory or are absolute paths into the test's
``escape`` directory, lone surrogates, huge numbers, NaN and infinities, long strings), plus
unknown ops, non-objects, lines that are not JSON or not UTF-8, JSON nested past Python's
recursion limit, integers past its digit limit, and lines over the socket's 64 KiB limit.

Configuration files: valid files mutated (bytes flipped, inserted, cut), keys and values of
every wrong type, unknown keys, deep nesting, not UTF-8, empty, huge; drop-ins that repeat an
export name, detach unknown names, point at missing files or at directories.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzzing import Chooser

MAX_LINE = 64 * 1024  # hvds.vdsa.control.MAX_REQUEST_BYTES

# Values of no type a control field wants, or of the wrong one.
WRONG: list[Any] = [
    None, True, False, 0, -1, 1 << 64, 1 << 70, 1.5, -0.0, math.inf, -math.inf, math.nan,
    "", "x", "\udcff", "12", "true", [], ["vpg1"], [1, 2], {}, {"a": 1}, {"vpg": "vpg1"},
]  # fmt: skip


@dataclass(frozen=True)
class Names:
    """What the fuzzed VDSAs hold, so that some requests reach past the lookups: VPG names
    (``safe``: the ones a destructive op may name, never the replicated one), disks, a
    datastore, a script, tap export names, and a directory names may try to escape into."""

    vpgs: tuple[str, ...]
    safe_vpgs: tuple[str, ...]
    disks: tuple[str, ...]
    datastore: str
    script: str
    exports: tuple[str, ...]
    escape: Path

    def hostile(self, c: Chooser) -> str:
        """A name that must not become a path outside the VDSA's own directories."""
        return c.pick([
            f"{'../' * c.integer(1, 8)}escaped-{c.integer(0, 99)}",
            f"{self.escape}/escaped-{c.integer(0, 99)}",
            "detached", "served", ".hidden", "a/b", "a\x00b", "x" * c.integer(200, 5000),
            "-rf", "--help", "\udcff", " ", "\n",
        ])  # fmt: skip


def _text(c: Chooser, names: Names, choices: tuple[str, ...] | list[str]) -> Any:
    roll = c.integer(0, 9)
    if roll < 5 and choices:
        return c.pick(list(choices))
    if roll < 7:
        return names.hostile(c)
    if roll < 8:
        return c.blob(40).decode("latin-1")
    return c.pick(WRONG)


def _integer(c: Chooser) -> Any:
    roll = c.integer(0, 9)
    if roll < 4:
        return c.pick([0, 1, 2, 3, -1, 2**63 - 1, 2**63, 2**64, 10**30, 1_700_000_000_000_000_000])
    if roll < 6:
        return c.integer(-(2**31), 2**31)
    return c.pick(WRONG)


def _value(kind: str, c: Chooser, names: Names) -> Any:
    """A value for a field of ``kind``: mostly plausible, often hostile, sometimes wrong."""
    if c.chance(0.15):
        return c.pick(WRONG)
    if kind == "vpg":
        return _text(c, names, names.vpgs)
    if kind == "safe_vpg":
        return _text(c, names, names.safe_vpgs)
    if kind == "disk":
        return _text(c, names, names.disks)
    if kind == "datastore":
        return _text(c, names, [names.datastore])
    if kind == "script":
        return _text(c, names, [names.script])
    if kind == "name":
        return _text(c, names, ["vm-a", "vm-b", "r1", "restore-1"])
    if kind == "export":
        return _text(c, names, ["vpg1.vm1-disk0.at-1.1", "nope"])
    if kind in ("text", "opttext"):
        return _text(c, names, ["", "t", "before-upgrade", "x" * 5000])
    if kind in ("int", "optint"):
        return None if kind == "optint" and c.chance(0.2) else _integer(c)
    if kind == "bool":
        return c.pick([True, False, *WRONG])
    if kind == "path":
        return _text(c, names, ["/etc/hostname", "/", "etc/passwd", "/nope", "/lost+found"])
    if kind == "network":
        return _text(c, names, ["", "bridge:br0", "netns:x", "bridge:", "netns:" + "n" * 20])
    if kind == "names":
        return [_text(c, names, names.exports) for _ in range(c.integer(0, 4))]
    if kind == "disks":  # QEMU's disks: never one that exists (a VM would boot)
        return [_text(c, names, ["nbd+unix:///nope?socket=/nonexistent", "/nonexistent"])
                for _ in range(c.integer(0, 3))]  # fmt: skip
    if kind == "diskmap":  # published disks: name -> image path
        return {  # vm1-disk0: a name the tap's own file serves already
            str(_text(c, names, [*names.exports, "vm1-disk0"])): _text(
                c, names, ["/nonexistent.raw"]
            )
            for _ in range(c.integer(0, 3))
        }
    if kind == "env":
        return c.pick([{}, {"HVDS_X": "1"}, {"PATH": "/tmp"}, {"HVDS_Y": [1]}, [["HVDS_Z", "2"]],
                       {"HVDS_\udcff": "x"}, "HVDS_A=1"])  # fmt: skip
    if kind == "boot":
        return c.pick([{}, {"memory_mb": 1}, {"cpus": "2"}, {"kernel": "/nonexistent"},
                       {"nope": 1}, {"delay_seconds": math.inf}, []])  # fmt: skip
    if kind == "vpgs":  # configure: a whole set of VPGs (mostly invalid)
        return c.pick([[], [{}], [{"name": "x"}], {"name": "x"}, [None], "x",
                       [{"name": "x", "disks": [], "targets": []}]])  # fmt: skip
    raise ValueError(kind)


_SELECT = {"time_ns": "optint", "checkpoint": "optint", "tag": "opttext"}
# Every op of the control socket and the fields it reads (hvds.vdsa.service).
OPS: dict[str, dict[str, str]] = {
    "status": {},
    "logs": {},
    "checkpoint": {"vpg": "vpg", "tag": "text", "description": "text"},
    "checkpoints": {"vpg": "vpg"},
    "hold": {"vpg": "vpg", "cut": "int", "tag": "text", "description": "text"},
    "release": {"vpg": "vpg", "cut": "int"},
    "analysis": {"vpg": "vpg"},
    "view_open": {"vpg": "vpg", "disk": "disk", **_SELECT},
    "view_close": {"export": "export"},
    "configure": {"source_vpg": "vpgs", "target_vpg": "vpgs"},
    "failover": {"vpg": "safe_vpg", **_SELECT},
    "failover_rollback": {"vpg": "safe_vpg"},
    "failover_commit": {"vpg": "safe_vpg"},
    "vm_start": {"name": "name", "disks": "disks", "boot": "boot", "network": "network"},
    "vm_status": {"name": "name"},
    "vm_stop": {"name": "name"},
    "restore_disk": {
        "vpg": "vpg",
        "disk": "disk",
        "datastore": "datastore",
        "name": "name",
        **_SELECT,
    },
    "run_script": {"name": "script", "env": "env"},
    "file_read": {
        "vpg": "vpg",
        "disk": "disk",
        "path": "path",
        "partition": "optint",
        **_SELECT,
    },
    "tap_detach": {"exports": "names", "detached": "bool"},
    "tap_publish": {"group": "name", "disks": "diskmap"},
}


def _plausible(kind: str, c: Chooser, names: Names) -> Any:
    """A value of ``kind`` that the op would take (it may still find nothing by that name)."""
    plain: dict[str, Any] = {
        "vpg": list(names.vpgs), "safe_vpg": list(names.safe_vpgs), "disk": list(names.disks),
        "datastore": [names.datastore], "script": [names.script], "name": ["vm-a", "r1"],
        "export": ["nope"], "text": ["", "t"], "opttext": [None, "t"], "int": [0, 1, 2**40],
        "optint": [None, 1], "bool": [True, False], "path": ["/etc/hostname"],
        "network": [""], "names": [["fuzz-a"], []], "disks": [["/nonexistent"]],
        "diskmap": [{"fuzz-a": "/nonexistent.raw"}, {}], "env": [{}, {"HVDS_X": "1"}],
        "boot": [{}], "vpgs": [[]],
    }  # fmt: skip
    return c.pick(plain[kind])


def control_request(c: Chooser, names: Names) -> dict[str, Any]:
    """One request object: an op (now and then an unknown one or a wrong type) and its fields.
    Half the time every field is plausible but one, which is hostile, of a wrong type or
    random (so that it reaches the code past the others' checks); else each field is present
    or not, plausible, hostile or of a wrong type. Sometimes extra fields."""
    if c.chance(0.5):
        op = c.pick(list(OPS))
        request = {"op": op, **{f: _plausible(k, c, names) for f, k in OPS[op].items()}}
        if OPS[op]:
            field = c.pick(list(OPS[op]))
            kind = OPS[op][field]
            request[field] = c.pick([names.hostile(c), c.pick(WRONG), _value(kind, c, names)])
        return request
    roll = c.integer(0, 19)
    if roll == 0:
        op: Any = c.pick(WRONG)
    elif roll == 1:
        op = c.pick(["", "STATUS", "status ", "nope", "__init__", "_checkpoint", "start"])
    else:
        op = c.pick(list(OPS))
    request: dict[str, Any] = {} if c.chance(0.02) else {"op": op}
    for field, kind in OPS.get(op, {}).items() if isinstance(op, str) else ():
        if c.chance(0.85):
            request[field] = _value(kind, c, names)
    if c.chance(0.1):
        request[c.pick(["extra", "vpg", "op", "ok", "error"])] = c.pick(WRONG)
    return request


def encode(request: Any) -> bytes:
    """A request as a line; lone surrogates go out as the bytes they would be (not UTF-8)."""
    return json.dumps(request).encode("utf-8", "surrogatepass") + b"\n"


def raw_line(c: Chooser) -> bytes:
    """A line that is not a valid request object, or that is too long."""
    roll = c.integer(0, 11)
    if roll == 0:
        return c.blob(300).replace(b"\n", b" ") + b"\n"
    if roll == 1:
        return b"\xff\xfe" + c.blob(20).replace(b"\n", b" ") + b"\n"
    if roll == 2:  # deeper than Python's recursion limit
        depth = c.integer(1000, 20000)
        return b"[" * depth + b"]" * depth + b"\n"
    if roll == 3:
        depth = c.integer(1000, 10000)
        return b'{"op":' * depth + b"1" + b"}" * depth + b"\n"
    if roll == 4:  # past int()'s 4300 digits
        return b'{"op": "hold", "vpg": "vpg1", "cut": ' + b"9" * c.integer(4301, 60000) + b"}\n"
    if roll == 5:
        return c.pick([b"[]\n", b"1\n", b'"status"\n', b"null\n", b"true\n", b"NaN\n",
                       b"Infinity\n", b"\n", b"\r\n", b" \n", b"{}\n"])  # fmt: skip
    if roll == 6:
        return b'{"op": "status"' + b" " * c.integer(0, 100) + b"\n"  # cut short
    if roll == 7:  # one byte past the limit, or far past it
        size = c.pick([MAX_LINE + 1, MAX_LINE + 2, 2 * MAX_LINE, 1 << 20])
        return b'{"op": "status", "pad": "' + b"x" * size + b'"}\n'
    if roll == 8:
        return b'{"op": "hold", "vpg": "vpg1", "cut": 1e999}\n'
    if roll == 9:
        return b'{"op": "status", "op": "checkpoints"}\n'
    if roll == 10:
        return b'{"op": "checkpoints", "vpg": "\\ud800"}\n'
    return encode({"op": "status"})[:-1] + b"\x00\n"


def mutate_toml(c: Chooser, text: bytes) -> bytes:
    """A configuration file damaged a few times."""
    data = bytearray(text)
    for _ in range(c.integer(1, 4)):
        roll = c.integer(0, 5)
        at = c.integer(0, len(data))
        if roll == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << c.integer(0, 7)
        elif roll == 1:
            data[at:at] = c.pick([b"=", b"[", b"]", b'"', b"\n", b"[[export]]\n", b"\xff",
                                  b"\x00", b"#", b"'''", b"{", b"}", b",", b"1e9999"])  # fmt: skip
        elif roll == 2:
            del data[at : at + c.integer(1, 40)]
        elif roll == 3:
            data = data[:at]
        elif roll == 4:
            data[at:at] = c.blob(30)
        else:
            data += b"\n" + c.pick(_HOSTILE_TOML)
    return bytes(data)


_HOSTILE_TOML = [
    b"[tap]\n",
    b"export = 1\n",
    b"export = []\n",
    b"[[export]]\nname = 1\npath = 2\n",
    b'[[export]]\nname = ""\npath = "/x"\n',
    b'detached = "vm1-disk0"\n',
    b"detached = [1, 2]\n",
    b"nope = 1\n",
    b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"a = " + b"{b = " * 2000 + b"1" + b"}" * 2000 + b"\n",
    b"x = 1979-05-27T07:32:00Z\n",
    b'[[export]]\nname = "n"\npath = "/nonexistent"\nread_only = "yes"\n',
    b'[[export]]\nname = "' + b"n" * 5000 + b'"\npath = "/x"\n',
    b'[[export]]\nname = "n"\npath = "\\u0000"\n',
]


def drop_in(c: Chooser, exports: list[str], paths: list[str], escape: Path) -> bytes:
    """A drop-in file of ``exports_dir``: valid, or mutated, or hostile."""
    roll = c.integer(0, 9)
    if roll <= 3:  # structurally valid: exports that may repeat, be missing or be directories
        lines = []
        for _ in range(c.integer(0, 3)):
            name = c.pick([*exports, f"fuzz-{c.integer(0, 9)}", "x" * 300, "a/b", "%2e%2e"])
            path = c.pick([*paths, "/nonexistent", "/", str(escape), "/dev/null", "\\u0000"])
            lines.append(f'[[export]]\nname = {json.dumps(name)}\npath = "{path}"\n')
            if c.chance(0.3):
                lines.append(f"read_only = {c.pick(['true', 'false'])}\n")
        if c.chance(0.5):
            names = [c.pick([*exports, "nope", ""]) for _ in range(c.integer(0, 3))]
            lines.insert(0, f"detached = {json.dumps(names)}\n")
        return "".join(lines).encode()
    if roll <= 7:
        return mutate_toml(c, drop_in(c, exports, paths, escape))
    if roll == 8:
        return c.pick([b"", b"\xff\xfe\x00", b"\x00" * 100, b"[[export]]\n" * 1000,
                       b"detached = [" + b'"a",' * 20000 + b"]\n"])  # fmt: skip
    return c.pick(_HOSTILE_TOML)


# The JSON type each kind of field must have (docs/api.md and the ops' docstrings, not the
# code): a request with a field of another type must be refused.
_STR = ("vpg", "safe_vpg", "disk", "datastore", "script", "name", "export", "text", "path")
_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys((*_STR, "network"), (str,)),
    "opttext": (str, type(None)),
    "int": (int,),
    "optint": (int, type(None)),
    "bool": (bool,),
    "names": (list,),
    "disks": (list,),
    "vpgs": (list,),
    "diskmap": (dict,),
    "env": (dict,),
    "boot": (dict,),
}


def wrong_type(request: dict[str, Any]) -> str | None:
    """The first field of ``request`` whose value is not of the type its op reads, if any."""
    op = request.get("op")
    fields = OPS.get(op, {}) if isinstance(op, str) else {}
    for field, kind in fields.items():
        if field not in request:
            continue
        value = request[field]
        wanted = _TYPES[kind]
        if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
            return f"{field} = {value!r}"
        if kind in ("names", "disks") and not all(isinstance(v, str) for v in value):
            return f"{field} = {value!r}"
        if kind in ("diskmap", "env") and not all(isinstance(v, str) for v in value.values()):
            return f"{field} = {value!r}"
    return None


Check = Callable[[dict[str, Any]], str | None]


def reply_problem(reply: Any) -> str | None:
    """What is wrong with a control reply, if anything: it must be a JSON object with a boolean
    "ok", and a non-empty error string when not ok."""
    if not isinstance(reply, dict):
        return f"reply {reply!r} is not an object"
    if not isinstance(reply.get("ok"), bool):
        return f"reply without a boolean ok: {reply!r}"
    if not reply["ok"] and not (isinstance(reply.get("error"), str) and reply["error"]):
        return f"refusal without an error message: {reply!r}"
    return None
