"""CLI commands take (ctx, input) with input = {"flags": {...}, "argv": [...]}."""

from __future__ import annotations


def greet(ctx, input):
    text = f"hello {input['flags']['name']}"
    return text.upper() if input["flags"]["shout"] else text
