"""Profiles: named bundles of product settings, inheriting through `extends`."""

from __future__ import annotations

from typing import Any

from kblabs.config.problems import ConfigProblem
from kblabs.config.settings import Profile


def check_profiles(profiles: list[Profile], source: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    index: dict[str, int] = {}
    for i, profile in enumerate(profiles):
        if profile.id in index:
            problems.append(
                ConfigProblem(source, f"profiles[{i}].id", f"duplicate profile id {profile.id!r}")
            )
        index.setdefault(profile.id, i)
    for i, profile in enumerate(profiles):
        if profile.extends is None:
            continue
        if profile.extends not in index:
            problems.append(
                ConfigProblem(
                    source,
                    f"profiles[{i}].extends",
                    f"profile {profile.id!r} extends unknown profile {profile.extends!r}",
                )
            )
            continue
        cycle = _find_cycle(profile.id, profiles, index)
        if cycle:
            problems.append(
                ConfigProblem(
                    source,
                    f"profiles[{i}].extends",
                    "extends cycle: " + " -> ".join(cycle),
                )
            )
    return problems


def _find_cycle(start: str, profiles: list[Profile], index: dict[str, int]) -> list[str]:
    chain = [start]
    current = profiles[index[start]].extends
    while current is not None and current in index:
        if current in chain:
            return [*chain, current] if current == start else []
        chain.append(current)
        current = profiles[index[current]].extends
    return []


def resolve_products(profiles: list[Profile], active: str) -> dict[str, dict[str, Any]]:
    """Products of `active` merged over its ancestors (each product merged shallowly).
    Call only after `check_profiles` found no problem."""
    by_id = {profile.id: profile for profile in profiles}
    chain: list[Profile] = []
    current: str | None = active
    while current is not None and current in by_id and by_id[current] not in chain:
        chain.append(by_id[current])
        current = by_id[current].extends
    merged: dict[str, dict[str, Any]] = {}
    for profile in reversed(chain):
        for product, values in profile.products.items():
            merged[product] = {**merged.get(product, {}), **values}
    return merged
