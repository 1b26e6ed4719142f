"""`plugin new NAME`: start a plugin folder from the templates in `templates/plugin/`.

NAME is `my-plugin` (the id becomes `@local/my-plugin`) or `@scope/my-plugin`. The
unscoped part names the distribution and the CLI group; with `-` → `_` it names the
Python package. Exit 2 for a name that cannot work, 1 for a folder that is not empty
(unless --force, which rewrites the generated files and leaves any other file alone).
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from kblabs.cli.context import CliContext
from kblabs.errors import ExitCode

TEMPLATES = Path(__file__).parent / "templates" / "plugin"
DEFAULT_SCOPE = "local"
# The unscoped part: a CLI word (no leading dash), a distribution name and, with `-` →
# `_`, a Python identifier.
SHORT_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class BadName(ValueError):
    pass


@dataclass(frozen=True)
class PluginName:
    id: str  # @scope/name
    name: str  # distribution name and CLI group
    package: str  # Python package


def parse_name(raw: str) -> PluginName:
    from kblabs.plugins.manifest import PLUGIN_ID

    if raw.startswith("@"):
        scope, _, short = raw[1:].partition("/")
    else:
        scope, short = DEFAULT_SCOPE, raw
    plugin_id = f"@{scope}/{short}"
    if raw.startswith("@") and (not scope or not short):
        raise BadName(f"{raw!r} has no name after the scope: use @scope/my-plugin")
    if not re.match(PLUGIN_ID, plugin_id):
        raise BadName(
            f"{raw!r} is not a plugin name: use lowercase letters, digits and dashes, "
            "like my-plugin or @scope/my-plugin"
        )
    if not SHORT_NAME.match(short):
        raise BadName(
            f"{short!r} must start with a letter and have no leading, trailing or double "
            "dashes: it is also the CLI group and the Python package name"
        )
    package = short.replace("-", "_")
    if keyword.iskeyword(package):
        raise BadName(f"{package!r} is a Python keyword and cannot be the package name")
    return PluginName(plugin_id, short, package)


def _check_free(name: PluginName, target: Path) -> None:
    """The CLI group must not be a built-in command, the package no module that exists."""
    from kblabs.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices or {}
    if name.name in commands:
        raise BadName(
            f"{name.name!r} is a built-in command: the plugin's CLI group "
            f"`python -m kblabs {name.name} …` would never run; choose another name"
        )
    try:
        spec = importlib.util.find_spec(name.package)
    except (ImportError, ValueError):
        spec = None
    where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
    if where and not Path(where).resolve().is_relative_to(target):
        raise BadName(
            f"the Python package name {name.package!r} is already taken by {where}; "
            "choose another name"
        )


def render(name: PluginName, shown_path: str) -> dict[str, str]:
    """Relative path → text of every generated file."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    values = {
        "id": name.id,
        "id_url": quote(name.id, safe=""),
        "name": name.name,
        "dist": name.name,
        "package": name.package,
        "env_prefix": name.package.upper(),
        "display_name": name.name.replace("-", " ").title(),
        "display_path": shown_path,
    }
    files = {}
    for template in sorted(TEMPLATES.rglob("*.j2")):
        parts = list(template.relative_to(TEMPLATES).with_suffix("").parts)
        if parts[0] == "package":
            parts[0] = name.package
        source = template.relative_to(TEMPLATES).as_posix()
        files["/".join(parts)] = env.get_template(source).render(values)
    return files


def _shown(path: Path) -> str:
    """`path` for commands the user copies: relative to the current folder when inside."""
    cwd = Path.cwd().resolve()
    return path.relative_to(cwd).as_posix() if path.is_relative_to(cwd) else str(path)


def run_new(ctx: CliContext) -> ExitCode:
    try:
        name = parse_name(ctx.args.name)
        target = Path(ctx.args.dir or name.name).expanduser().resolve()
        _check_free(name, target)
    except BadName as exc:
        ctx.output.failure(str(exc), code="PLUGIN_NAME_INVALID")
        return ExitCode.USAGE
    if target.exists() and not target.is_dir():
        ctx.output.failure(f"{target} exists and is not a folder", code="PLUGIN_DIR_EXISTS")
        return ExitCode.FAILURE
    if target.is_dir() and any(target.iterdir()) and not ctx.args.force:
        ctx.output.failure(
            f"{target} exists and is not empty; choose another --dir, or add --force to "
            "overwrite the generated files there",
            code="PLUGIN_DIR_EXISTS",
        )
        return ExitCode.FAILURE
    shown = _shown(target)
    files = render(name, shown)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    quoted = shlex.quote(shown)
    steps = [
        f"python -m kblabs plugin link {quoted}",
        f"python -m kblabs {name.name} hello --name you",
        f"python -m pytest {shlex.quote(os.path.join(shown, 'tests'))}",
    ]

    def human(console) -> None:
        console.print(f"created plugin {name.id} in {shown}", markup=False)
        for relative in files:
            console.print(f"  {relative}", markup=False)
        console.print("next, from the project folder that holds it:", markup=False)
        for step in steps:
            console.print(f"  {step}", markup=False)

    ctx.output.result(
        {
            "ok": True,
            "data": {"id": name.id, "path": str(target), "files": list(files), "next": steps},
        },
        human,
    )
    return ExitCode.OK
