"""The fields of each control request, checked before an op runs.

A request is one JSON object; its fields must be of the type the op reads (strict: no "12"
for 12, no true for 1, no string where a list of names is wanted) and within range, else the
op is refused with what is wrong ("cut: Input should be a valid integer"). Unknown fields are
ignored, so that a newer manager may send more.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Checkpoint times, cuts and ids travel in 64-bit fields of the link and journal formats.
U64 = Annotated[int, Field(ge=0, lt=1 << 64)]
# What names a file of ours (a restored image, a script, a drop-in of the tap's exports).
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Text = Annotated[str, Field(max_length=64 * 1024)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Vpg(Request):
    vpg: Text


class Labelled(Vpg):
    tag: Text = ""
    description: Text = ""


class Cut(Vpg):
    cut: U64


class Hold(Cut, Labelled):
    pass


class At(Vpg):
    """A checkpoint: by its cut's time, its id or its tag (the newest with it); else the latest."""

    time_ns: U64 | None = None
    checkpoint: U64 | None = None
    tag: Text | None = None


class DiskAt(At):
    disk: Text


class Export(Request):
    export: Text


class VmName(Request):
    name: Annotated[str, Field(min_length=1, max_length=255)]


class VmStart(VmName):
    disks: Annotated[list[Text], Field(min_length=1, max_length=64)]
    boot: dict[str, Any] = Field(default_factory=dict)
    network: Text = ""


class RestoreDisk(DiskAt):
    datastore: Text
    name: Annotated[str, Field(pattern=FILE_NAME)]


class RunScript(Request):
    name: Annotated[str, Field(pattern=FILE_NAME)]
    env: dict[str, Text] = Field(default_factory=dict)


class FileRead(DiskAt):
    path: Text
    partition: Annotated[int, Field(ge=0, le=1 << 16)] | None = None


class TapDetach(Request):
    exports: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]],
                       Field(max_length=4096)]  # fmt: skip
    detached: bool = True


class TapPublish(Request):
    group: Annotated[str, Field(pattern=FILE_NAME)]
    disks: dict[Annotated[str, Field(min_length=1, max_length=4096)], Text]


Model = TypeVar("Model", bound=Request)


def parse(model: type[Model], request: dict[str, Any]) -> Model:
    """The request's fields as ``model`` wants them; ValueError saying what is wrong."""
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise ValueError(f"invalid request: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()
    )
