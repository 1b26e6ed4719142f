"""mind's pieces without the platform: .gitignore rules, line chunks, definitions."""

from __future__ import annotations

import pytest

from kblabs.mind.chunking import chunk_lines
from kblabs.mind.ignore import IgnoreRules
from kblabs.mind.index import definitions, exact_bonus, identifiers

RULES = """
# comment
*.log
!keep.log
build/
/top.txt
docs/**/draft.md
src/*.gen.py
cache?/
[Tt]emp/
"""


@pytest.mark.parametrize(
    ("path", "is_dir", "ignored"),
    [
        ("a.log", False, True),
        ("deep/x/a.log", False, True),
        ("keep.log", False, False),  # negation wins (later rule)
        ("build", True, True),
        ("build", False, False),  # dir-only rule, a file named build
        ("x/build", True, True),  # unanchored: any depth
        ("top.txt", False, True),
        ("x/top.txt", False, False),  # anchored to the root
        ("docs/draft.md", False, True),  # ** matches zero folders
        ("docs/a/b/draft.md", False, True),
        ("src/x.gen.py", False, True),
        ("src/sub/x.gen.py", False, False),  # * does not cross /
        ("cache1", True, True),
        ("cache12", True, False),
        ("Temp", True, True),
        ("temp", True, True),
        ("main.py", False, False),
    ],
)
def test_gitignore_rules(path: str, is_dir: bool, ignored: bool) -> None:
    rules = IgnoreRules()
    rules.add("", RULES)
    assert rules.ignored(path, is_dir) is ignored


def test_a_nested_gitignore_applies_below_its_folder_only() -> None:
    rules = IgnoreRules()
    rules.add("", "*.tmp\n")
    rules.add("pkg", "/local.py\n!keep.tmp\n")
    assert rules.ignored("pkg/local.py", False)
    assert not rules.ignored("local.py", False)
    assert not rules.ignored("pkg/keep.tmp", False)  # the deeper file re-includes it
    assert rules.ignored("other/keep.tmp", False)


def test_chunks_overlap_cover_every_line_and_stop_at_max_chars() -> None:
    text = "\n".join(f"line {n}" for n in range(1, 101))
    chunks = chunk_lines(text, lines=40, overlap=10)
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 40), (31, 70), (61, 100)]
    wide = chunk_lines("\n".join("x" * 1000 for _ in range(10)), lines=40, max_chars=2500)
    assert all(len(c.text) <= 2500 for c in wide)
    assert wide[-1].end_line == 10  # nothing lost
    assert chunk_lines("\n\n  \n") == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_lines("x", lines=5, overlap=5)


def test_definitions_across_languages() -> None:
    source = "\n".join(
        [
            "def parse_config(path):",
            "class ConfigError(Exception):",
            "async def fetchUser(id):",
            "export function renderPage(props) {",
            "const makeStore = (state) => state",
            "func (s *Server) Serve() {",
            "fn build_index(root: &Path) {",
            "pub struct TokenCache {",
            "handler = lambda event: None",
            "x = 1  # not a definition",
        ]
    )
    found = definitions(chunk_lines(source))
    assert set(found) >= {
        "parse_config",
        "configerror",
        "fetchuser",
        "renderpage",
        "makestore",
        "build_index",
        "serve",  # a Go method, after its receiver
        "tokencache",
        "handler",
    }
    assert "x" not in found


def test_exact_bonus_counts_the_query_names_a_chunk_contains() -> None:
    names = identifiers("where is parse_config called with loadUser")
    assert {"parse_config", "loaduser"} <= names
    assert (
        exact_bonus(names, "parse_config(x)\nloadUser()", "a.py")
        > exact_bonus(names, "parse_config(x)", "a.py")
        > exact_bonus(names, "parse_configs(x)", "a.py")
        == 0.0
    )
