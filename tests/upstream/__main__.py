"""``python -m tests.upstream --host 127.0.0.1 --port 0 [--latency-ms 50 --p-500 0.2 ...]``.

Prints ``LISTENING http://<host>:<port>`` on stdout once it accepts connections; exits 0 on
SIGTERM or SIGINT. Every :class:`~tests.upstream.faults.FaultConfig` field is a flag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from tests.upstream.faults import FAULT_KINDS, FaultConfig
from tests.upstream.server import serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.upstream", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (when installed)")
    p.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process dies"
    )
    defaults = FaultConfig()
    for f in dataclasses.fields(FaultConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = str(f.type)
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif kind == "int":
            p.add_argument(flag, type=int, default=default)
        elif kind == "float":
            p.add_argument(flag, type=float, default=default)
        elif f.name == "fail_first_kind":
            p.add_argument(flag, choices=FAULT_KINDS, default=default)
        else:
            p.add_argument(flag, default=default)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = {f.name for f in dataclasses.fields(FaultConfig)}
    try:
        config = FaultConfig().updated({k: v for k, v in vars(args).items() if k in names})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.uvloop:
        import uvloop

        uvloop.run(serve(config, args.host, args.port, exit_with_parent=args.exit_with_parent))
    else:
        asyncio.run(serve(config, args.host, args.port, exit_with_parent=args.exit_with_parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
