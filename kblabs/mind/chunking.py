"""Code cut into overlapping windows of lines: what `mind` embeds and returns as hits.

Lines, not tokens or syntax, because it works for every language and a hit is then a
line range an editor can open. The overlap keeps a function that straddles a boundary
whole in at least one chunk. A window also stops early at `max_chars`, so minified or
generated files with enormous lines still give chunks of a sane size.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LINES = 40
DEFAULT_OVERLAP = 10
DEFAULT_MAX_CHARS = 4000


@dataclass(frozen=True)
class Chunk:
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str


def chunk_lines(
    text: str,
    *,
    lines: int = DEFAULT_LINES,
    overlap: int = DEFAULT_OVERLAP,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Chunk]:
    if overlap >= lines:
        raise ValueError(f"overlap ({overlap}) must be smaller than the window ({lines})")
    all_lines = text.splitlines()
    chunks: list[Chunk] = []
    start = 0
    while start < len(all_lines):
        end, size = start, 0
        while end < len(all_lines) and end - start < lines:
            size += len(all_lines[end]) + 1
            end += 1
            if size >= max_chars:
                break
        body = "\n".join(all_lines[start:end])
        if body.strip():
            chunks.append(Chunk(start + 1, end, body[:max_chars]))
        if end >= len(all_lines):
            break
        start = max(end - overlap, start + 1)  # always move forward
    return chunks
