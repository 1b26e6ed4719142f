"""LLM tiers: which model answers a call that asks for `small`, `medium` or `large`.

Configured in `platform.adapterOptions.llm`:

    "tiers": {                                   // also read as "tierMapping"
      "small":  "gpt-4o-mini",                   // one model…
      "medium": [                                // …or entries, lowest priority first
        {"model": "gpt-4o", "priority": 1, "capabilities": ["coding", "vision"]},
        {"model": "gpt-4.1-mini", "priority": 2}
      ]
    },
    "defaultTier": "medium"

Rules (reference §D.4):

- **Tier.** A call without a tier gets `defaultTier`. With a mapping (`tiers` not
  empty), a requested tier that has entries is used as is; one without entries falls
  back to `defaultTier` with a warning. Without a mapping the adapter has one model,
  which serves `defaultTier`: asking for a lower tier is escalated silently (the
  caller gets more than it asked for), asking for a higher one is degraded with a
  warning.
- **Entry.** The tier's entries sorted by `priority` (lowest first; an entry without
  one takes its position in the list) → the first one that has **all** the requested
  capabilities; when none has them all, the first one. A tier without entries (or no
  mapping at all) uses the adapter's `model`.
- **Metadata.** The call's `metadata` gets `tier`, `provider` and `resource`; the
  caller's options are copied, never changed.

Everything is resolved per call from immutable configuration: two calls asking for
different tiers at the same time each get their own model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

Tier = Literal["small", "medium", "large"]
TIERS: tuple[Tier, ...] = get_args(Tier)
TIER_ORDER = {tier: index for index, tier in enumerate(TIERS)}
# The capabilities a simple configuration (no per-entry capabilities) is assumed to have.
ALL_CAPABILITIES = ("reasoning", "coding", "vision", "fast")


def is_tier(value: Any) -> bool:
    return isinstance(value, str) and value in TIER_ORDER


@dataclass(frozen=True)
class TierEntry:
    model: str
    priority: float = 0
    capabilities: tuple[str, ...] = ()

    def has_all(self, wanted: Iterable[str]) -> bool:
        return all(capability in self.capabilities for capability in wanted)


@dataclass(frozen=True)
class Resolution:
    """The binding of one call."""

    tier: Tier  # the tier that serves the call
    model: str
    requested_tier: Tier | None = None
    adapted: bool = False  # the tier differs from the one asked for
    warning: str | None = None  # set when the caller gets less than it asked for
    entry: TierEntry | None = None  # None: the adapter's own model served it
    capabilities: tuple[str, ...] = ()  # what the call asked for

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "model": self.model,
            "requestedTier": self.requested_tier,
            "adapted": self.adapted,
            "warning": self.warning,
        }


TierMapping = Mapping[Tier, Sequence[TierEntry]]


def normalize_mapping(raw: Mapping[Any, Any] | None) -> dict[Tier, tuple[TierEntry, ...]]:
    """`{tier: "model" | ["model" | {model, priority?, capabilities?}]}` → sorted entries.
    Tiers without entries are left out. Raises ValueError on an unknown tier name."""
    mapping: dict[Tier, tuple[TierEntry, ...]] = {}
    for tier, value in (raw or {}).items():
        if not is_tier(tier):
            raise ValueError(f"unknown tier {tier!r} (known: {', '.join(TIERS)})")
        items = [value] if isinstance(value, str | Mapping) else list(value or [])
        entries: list[tuple[float, int, TierEntry]] = []
        for position, item in enumerate(items):
            entry = _entry(item, position)
            entries.append((entry.priority, position, entry))
        if entries:
            mapping[cast(Tier, tier)] = tuple(e for _, _, e in sorted(entries))
    return mapping


def _entry(item: Any, position: int) -> TierEntry:
    if isinstance(item, TierEntry):
        return item
    if isinstance(item, str):
        return TierEntry(item, position)
    if isinstance(item, Mapping):
        priority = item.get("priority")
        return TierEntry(
            str(item["model"]),
            position if priority is None else float(priority),
            tuple(item.get("capabilities") or ()),
        )
    model = getattr(item, "model", None)  # a pydantic options object
    if isinstance(model, str):
        priority = getattr(item, "priority", None)
        return TierEntry(
            model,
            position if priority is None else float(priority),
            tuple(getattr(item, "capabilities", None) or ()),
        )
    raise ValueError(f"a tier entry must be a model name or {{model, priority}}, not {item!r}")


def select_tier(
    requested: Tier | None, default_tier: Tier, mapping: TierMapping
) -> tuple[Tier, bool, str | None]:
    """(tier to use, adapted, warning) — the tier rules of the module docstring."""
    if requested is None or requested == default_tier:
        return default_tier, False, None
    if mapping:
        if mapping.get(requested):
            return requested, False, None
        return (
            default_tier,
            True,
            f"tier {requested!r} has no models configured; using {default_tier!r}",
        )
    if TIER_ORDER[requested] < TIER_ORDER[default_tier]:
        return default_tier, True, None  # escalated: more than asked for, silently
    return (
        default_tier,
        True,
        f"tier {requested!r} was requested but only {default_tier!r} is configured; "
        f"using {default_tier!r}",
    )


def select_entry(entries: Sequence[TierEntry], capabilities: Sequence[str] = ()) -> TierEntry:
    """The first entry (by priority) with every requested capability, else the first."""
    ordered = sorted(entries, key=lambda e: e.priority)  # stable: list order breaks ties
    if capabilities:
        for entry in ordered:
            if entry.has_all(capabilities):
                return entry
    return ordered[0]


@dataclass(frozen=True)
class LLMRouter:
    """Tier → model for one adapter. Immutable: `resolve` has no side effects."""

    default_model: str
    default_tier: Tier = "medium"
    mapping: Mapping[Tier, tuple[TierEntry, ...]] = field(default_factory=dict)
    provider: str = "openai"

    @classmethod
    def from_config(
        cls,
        default_model: str,
        tiers: Mapping[Any, Any] | None = None,
        default_tier: str = "medium",
        provider: str = "openai",
    ) -> LLMRouter:
        if not is_tier(default_tier):
            raise ValueError(f"unknown default tier {default_tier!r} (known: {', '.join(TIERS)})")
        return cls(default_model, cast(Tier, default_tier), normalize_mapping(tiers), provider)

    # --- ILLMRouter -------------------------------------------------------------------

    def get_configured_tier(self) -> Tier:
        return self.default_tier

    def resolve(
        self, tier: str | None = None, capabilities: Sequence[str] | None = None
    ) -> Resolution:
        requested: Tier | None = cast(Tier, tier) if is_tier(tier) else None
        wanted = tuple(capabilities or ())
        actual, adapted, warning = select_tier(requested, self.default_tier, self.mapping)
        entries = self.mapping.get(actual)
        entry = select_entry(entries, wanted) if entries else None
        return Resolution(
            tier=actual,
            model=entry.model if entry else self.default_model,
            requested_tier=requested,
            adapted=adapted,
            warning=warning,
            entry=entry,
            capabilities=wanted,
        )

    def has_capability(self, capability: str) -> bool:
        return capability in self.get_capabilities()

    def get_capabilities(self) -> list[str]:
        """Every capability some entry declares; all of them when none declares any
        (a simple configuration is assumed to be able to do everything)."""
        declared: list[str] = []
        for entries in self.mapping.values():
            for entry in entries:
                declared.extend(c for c in entry.capabilities if c not in declared)
        return declared or list(ALL_CAPABILITIES)

    # --- per call ---------------------------------------------------------------------

    def route(self, opts: Mapping[str, Any] | None) -> tuple[Resolution, dict[str, Any]]:
        """(resolution, a copy of `opts` with `model` and `metadata` filled in). An
        explicit `opts.model` wins over the tier's model; the tier is still reported."""
        options = dict(opts or {})
        metadata = dict(options.get("metadata") or {})
        capabilities = metadata.get("capabilities") or ()
        if isinstance(capabilities, str):
            capabilities = (capabilities,)
        resolution = self.resolve(metadata.get("tier"), tuple(capabilities))
        if options.get("model"):
            resolution = Resolution(
                tier=resolution.tier,
                model=str(options["model"]),
                requested_tier=resolution.requested_tier,
                adapted=resolution.adapted,
                warning=resolution.warning,
                entry=None,
                capabilities=resolution.capabilities,
            )
        metadata.update(tier=resolution.tier, provider=self.provider, resource="llm")
        options["model"] = resolution.model
        options["metadata"] = metadata
        return resolution, options
