"""hvds-vdsa analyze IMAGE: print what a replicated disk image holds, as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hvds.analyzer.analyze import analyze


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvds-vdsa analyze",
        description="Report the partition table, file systems and OS of a raw disk image.",
    )
    parser.add_argument("image", type=Path, help="raw disk image (file or block device)")
    parser.add_argument(
        "--no-os", action="store_true", help="skip reading os-release (no debugfs runs)"
    )
    parser.add_argument("--compact", action="store_true", help="one line of JSON")
    args = parser.parse_args(argv)
    try:
        report = analyze(args.image, find_os=not args.no_os)
    except OSError as e:
        print(f"hvds-vdsa analyze: cannot read {args.image}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(report.to_json(indent=None if args.compact else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
