"""`.gitignore` rules, enough of git's syntax for deciding what `mind` indexes.

Supported: comments, blank lines, `!` negation, a trailing `/` (directories only), a
leading or inner `/` (anchored to the folder of the `.gitignore`), `*`, `?`, `[...]` and
`**` (any number of folders). Later rules win over earlier ones, and a folder's own
`.gitignore` is consulted after its parents'. Not supported: escaped leading `#`/`!`
and trailing-space escapes, which code repositories practically never use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool


def _translate(glob: str) -> str:
    """A gitignore glob (without its anchoring) as a regex over `/`-separated paths."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                out.append(re.escape(glob[i]))
                i += 1
            else:
                body = glob[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def parse(text: str) -> list[Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        prefix = "" if anchored else "(?:.*/)?"
        rules.append(Rule(re.compile(f"^{prefix}{_translate(line)}$"), negated, dir_only))
    return rules


class IgnoreRules:
    """The rules of every `.gitignore` met so far, each tied to its folder."""

    def __init__(self) -> None:
        self._layers: list[tuple[str, list[Rule]]] = []  # (folder relative to root, rules)

    def add(self, folder: str, text: str) -> None:
        rules = parse(text)
        if rules:
            self._layers.append((folder, rules))

    def ignored(self, path: str, is_dir: bool) -> bool:
        """`path` is relative to the root, `/`-separated."""
        verdict = False
        for folder, rules in self._layers:
            if folder and not path.startswith(folder + "/"):
                continue
            relative = path[len(folder) + 1 :] if folder else path
            for rule in rules:
                if rule.dir_only and not is_dir:
                    continue
                if rule.regex.match(relative):
                    verdict = not rule.negated
        return verdict
