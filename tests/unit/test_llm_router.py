"""The LLM tier router (reference §D.4): tier selection, entry selection, metadata."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kblabs.platform.llm_router import (
    LLMRouter,
    TierEntry,
    normalize_mapping,
    select_entry,
    select_tier,
)

MAPPING = normalize_mapping(
    {
        "small": "mini",
        "medium": [
            {"model": "coder", "priority": 2, "capabilities": ["coding"]},
            {"model": "general", "priority": 1, "capabilities": ["reasoning"]},
            {"model": "eyes", "priority": 3, "capabilities": ["vision", "coding"]},
        ],
    }
)


# --- tier selection ------------------------------------------------------------------------

TIER_CASES = [
    # requested, default, mapping, expected tier, adapted, warns
    (None, "medium", {}, "medium", False, False),
    ("medium", "medium", {}, "medium", False, False),
    ("small", "medium", {}, "medium", True, False),  # escalated silently
    ("small", "large", {}, "large", True, False),
    ("large", "medium", {}, "medium", True, True),  # degraded with a warning
    ("medium", "small", {}, "small", True, True),
    (None, "small", MAPPING, "small", False, False),
    ("small", "medium", MAPPING, "small", False, False),  # mapped: honoured as is
    ("medium", "small", MAPPING, "medium", False, False),  # higher but mapped: honoured
    ("large", "medium", MAPPING, "medium", True, True),  # no entries: default + warning
    ("large", "small", MAPPING, "small", True, True),
]


@pytest.mark.parametrize(
    ("requested", "default", "mapping", "tier", "adapted", "warns"), TIER_CASES
)
def test_select_tier(
    requested: Any, default: Any, mapping: Any, tier: str, adapted: bool, warns: bool
) -> None:
    chosen, was_adapted, warning = select_tier(requested, default, mapping)
    assert (chosen, was_adapted, warning is not None) == (tier, adapted, warns)
    if warning:
        assert repr(requested) in warning and repr(tier) in warning


# --- entry selection -----------------------------------------------------------------------

ENTRY_CASES = [
    ((), "general"),  # lowest priority first
    (("reasoning",), "general"),
    (("coding",), "coder"),  # the first (by priority) with the capability
    (("vision",), "eyes"),
    (("coding", "vision"), "eyes"),  # must have all
    (("vision", "reasoning"), "general"),  # nobody has both: the first entry
    (("telepathy",), "general"),
]


@pytest.mark.parametrize(("capabilities", "model"), ENTRY_CASES)
def test_select_entry(capabilities: tuple[str, ...], model: str) -> None:
    assert select_entry(MAPPING["medium"], capabilities).model == model


def test_entries_without_priority_keep_list_order_and_priorities_sort() -> None:
    mapping = normalize_mapping(
        {"large": ["first", "second", {"model": "urgent", "priority": -1}, {"model": "third"}]}
    )
    assert [e.model for e in mapping["large"]] == ["urgent", "first", "second", "third"]
    assert select_entry([TierEntry("b", 1), TierEntry("a", 1)]).model == "b"  # stable ties


def test_empty_tiers_are_left_out_and_unknown_tiers_refused() -> None:
    assert normalize_mapping({"small": [], "large": "big"}) == {"large": (TierEntry("big", 0),)}
    with pytest.raises(ValueError, match="unknown tier 'huge'"):
        normalize_mapping({"huge": "x"})
    with pytest.raises(ValueError, match="unknown default tier"):
        LLMRouter.from_config("m", {}, "xl")


# --- the router ----------------------------------------------------------------------------

ROUTE_CASES: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]] = [
    # config, opts, expected {model, tier, warns}
    ({}, None, {"model": "base", "tier": "medium", "warns": False}),
    ({}, {"metadata": {"tier": "small"}}, {"model": "base", "tier": "medium", "warns": False}),
    ({}, {"metadata": {"tier": "large"}}, {"model": "base", "tier": "medium", "warns": True}),
    (
        {"tiers": {"small": "mini", "large": "big"}},
        {"metadata": {"tier": "large"}},
        {"model": "big", "tier": "large", "warns": False},
    ),
    (  # the default tier has no entry: the adapter's model serves it
        {"tiers": {"small": "mini"}},
        None,
        {"model": "base", "tier": "medium", "warns": False},
    ),
    (
        {"tiers": {"medium": MAPPING["medium"]}},
        {"metadata": {"tier": "medium", "capabilities": ["vision"]}},
        {"model": "eyes", "tier": "medium", "warns": False},
    ),
    (  # an explicit model wins over the tier's
        {"tiers": {"small": "mini"}},
        {"model": "pinned", "metadata": {"tier": "small"}},
        {"model": "pinned", "tier": "small", "warns": False},
    ),
    (  # an unknown tier name is treated as no tier
        {"tiers": {"small": "mini"}, "default_tier": "small"},
        {"metadata": {"tier": "gigantic"}},
        {"model": "mini", "tier": "small", "warns": False},
    ),
]


@pytest.mark.parametrize(("config", "opts", "expected"), ROUTE_CASES)
def test_route(
    config: dict[str, Any], opts: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    router = LLMRouter.from_config(
        "base", config.get("tiers"), config.get("default_tier", "medium")
    )
    resolution, options = router.route(opts)
    assert resolution.model == expected["model"] == options["model"]
    assert resolution.tier == expected["tier"]
    assert (resolution.warning is not None) == expected["warns"]
    assert options["metadata"]["tier"] == expected["tier"]
    assert options["metadata"]["provider"] == "openai"
    assert options["metadata"]["resource"] == "llm"


def test_route_copies_the_callers_options() -> None:
    router = LLMRouter.from_config("base", {"large": "big"}, "medium")
    opts = {"temperature": 0.1, "metadata": {"tier": "large", "namespaceId": "team-a"}}
    _, routed = router.route(opts)
    assert opts == {"temperature": 0.1, "metadata": {"tier": "large", "namespaceId": "team-a"}}
    assert routed["metadata"]["namespaceId"] == "team-a"
    assert routed["temperature"] == 0.1


def test_concurrent_calls_get_their_own_binding() -> None:
    """No shared "current model": interleaved resolutions never see each other's."""
    router = LLMRouter.from_config("base", {"small": "mini", "large": "big"}, "medium")

    async def resolve(tier: str) -> str:
        await asyncio.sleep(0)
        resolution, _ = router.route({"metadata": {"tier": tier}})
        await asyncio.sleep(0)
        return resolution.model

    async def main() -> list[str]:
        return await asyncio.gather(*(resolve(t) for t in ["small", "large", "medium"] * 20))

    assert asyncio.run(main()) == ["mini", "big", "base"] * 20


def test_capabilities() -> None:
    simple = LLMRouter.from_config("base")
    assert simple.has_capability("vision")  # nothing declared: everything assumed
    declared = LLMRouter.from_config("base", {"medium": MAPPING["medium"]})
    assert set(declared.get_capabilities()) == {"coding", "reasoning", "vision"}
    assert declared.has_capability("coding") and not declared.has_capability("fast")
    assert declared.get_configured_tier() == "medium"
