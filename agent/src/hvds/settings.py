"""What every hvds configuration file shares: TOML read into a strict pydantic model, and one
kind of error that says which file and which field is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says where."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HostPort(StrictModel):
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))

    @classmethod
    def coerce(cls, value: object) -> object:
        """For field validators: accept "host:port" strings as well as tables."""
        return cls.parse(value) if isinstance(value, str) else value


Model = TypeVar("Model", bound=BaseModel)
# The problems of an invalid file that its error names (the first ones).
MAX_SHOWN = 10


def load_toml(path: Path, model: type[Model]) -> Model:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deep") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:MAX_SHOWN]
        )
        if len(errors) > MAX_SHOWN:  # a file of 1,000 bad tables made a 64 KiB message
            problems += f"; and {len(errors) - MAX_SHOWN} more"
        raise ConfigError(f"{path}: {problems}") from exc
