"""Reading `platform.adapterOptions.<token>` into a typed, validated options object."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from kblabs.errors import StartupError

T = TypeVar("T", bound="AdapterOptions")


class AdapterOptions(BaseModel):
    """Options of one built-in adapter: camelCase in kb.config.json; unknown keys are an
    error so that a typo is reported at start instead of silently ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def parse_options(model: type[T], token: str, raw: Any) -> T:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StartupError(
            "adapters",
            f"platform.adapterOptions.{token} must be an object, not {type(raw).__name__}",
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"platform.adapterOptions.{token}.{'.'.join(str(p) for p in error['loc'])}: "
            f"{error['msg']}"
            for error in exc.errors()
        ]
        raise StartupError("adapters", "; ".join(problems)) from None
