"""`version`: the platform version and the newest schema revision it knows."""

from __future__ import annotations

import platform

import kblabs
from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode


def register(commands) -> None:
    parser = commands.add_parser("version", help="print the version")
    parser.set_defaults(handler=run)


def run(ctx: CliContext) -> ExitCode:
    from kblabs.store.migrations import script_directory

    heads = sorted(script_directory().get_heads())
    payload = {
        "ok": True,
        "version": kblabs.__version__,
        "schemaHead": heads[0] if len(heads) == 1 else heads,
        "python": platform.python_version(),
    }
    ctx.output.result(
        payload,
        lambda c: c.print(
            f"kblabs {kblabs.__version__} (schema {', '.join(heads)}, Python {payload['python']})"
        ),
    )
    return ExitCode.OK
