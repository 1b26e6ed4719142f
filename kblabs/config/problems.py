"""Configuration problems: each names where it came from and the JSON path it is about."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ConfigProblem:
    source: str  # a file path, "env NAME" or "--flag"
    path: str  # JSON path inside the document ("server.port"), "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class ConfigError(Exception):
    """Raised with every problem found, never only the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
