"""Handlers of `@kb-labs/commit`.

The staged diff comes from `git diff --cached` in the call's working directory (the
user's shell for the CLI, a folder of the project for REST), or from the request body.
Big diffs are cut to `MAX_DIFF_CHARS`, after the `--stat` summary, which always goes in
whole so the LLM knows every file that changed. The answer is checked against the
Conventional Commits header rule; one that does not fit is sent back once with the
problem named, and returned with `valid: false` if it still does not fit.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from kblabs.sdk import PluginError

MAX_DIFF_CHARS = 12_000
TYPES = ("feat", "fix", "docs", "style", "refactor", "perf", "test", "build", "ci", "chore")
HEADER = re.compile(rf"^({'|'.join(TYPES)}|revert)(\([\w./@-]+\))?!?: \S.{{0,98}}$")
GIT_TIMEOUT_S = 30
LLM_OPTIONS = {"temperature": 0.2, "max_tokens": 400, "metadata": {"tier": "small"}}
SYSTEM = (
    "You write git commit messages in the Conventional Commits format. Answer with the "
    "message only: a header line `type(scope): summary` (types: "
    + ", ".join(TYPES)
    + "; imperative mood, at most 72 characters, no trailing period), then optionally a "
    "blank line and a short body explaining what changed and why. No code fences."
)


async def _git(cwd: Path, *args: str) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise PluginError("GIT_NOT_FOUND", "git is not installed on this machine", 500) from None
    try:
        out, err = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        message = f"git {args[0]} took over {GIT_TIMEOUT_S} s"
        raise PluginError("GIT_TIMEOUT", message, 504) from None
    if process.returncode != 0:
        message = err.decode("utf-8", "replace").strip()
        if "not a git repository" in message.lower():
            raise PluginError("NOT_A_GIT_REPOSITORY", f"{cwd} is not in a git repository", 400)
        raise PluginError("GIT_FAILED", f"git {' '.join(args)}: {message}", 500)
    return out.decode("utf-8", "replace")


async def staged_diff(cwd: Path) -> str:
    await _git(cwd, "rev-parse", "--show-toplevel")  # outside a repository: a clear error
    stat = await _git(cwd, "diff", "--cached", "--stat")
    if not stat.strip():
        raise PluginError(
            "NOTHING_STAGED", "nothing is staged: `git add` the changes to describe first", 400
        )
    diff = await _git(cwd, "diff", "--cached", "--no-color", "--no-ext-diff")
    return stat + "\n" + diff


def prompt_for(diff: str, hint: str | None) -> str:
    shown = diff if len(diff) <= MAX_DIFF_CHARS else diff[:MAX_DIFF_CHARS] + "\n[diff cut]"
    about = f"The author says the change is about: {hint}\n\n" if hint else ""
    return f"{about}Write the commit message for this staged diff:\n\n{shown}"


def clean(text: str) -> str:
    """The message without code fences, quotes or blank lines around it."""
    lines = [line for line in text.strip().splitlines() if not line.strip().startswith("```")]
    return "\n".join(lines).strip().strip('"').strip()


def _content(response: Any) -> tuple[str, str]:
    if isinstance(response, dict):  # from a plugin worker: JSON
        return str(response.get("content", "")), str(response.get("model", ""))
    return str(getattr(response, "content", "")), str(getattr(response, "model", ""))


async def propose(ctx: Any, diff: str, hint: str | None = None) -> dict[str, Any]:
    llm = ctx.platform.llm
    if llm is None:
        raise PluginError(
            "LLM_NOT_CONFIGURED",
            'commit needs an LLM: set platform.adapters.llm to "openai" in kb.config.json '
            "and OPENAI_API_KEY (any OpenAI-compatible endpoint: OPENAI_BASE_URL); "
            "see docs/adapters.md",
            503,
        )
    options = {**LLM_OPTIONS, "system_prompt": SYSTEM}
    prompt = prompt_for(diff, hint)
    message, model = _content(await llm.complete(prompt, options))
    message = clean(message)
    attempts = 1
    header = message.splitlines()[0] if message else ""
    if not HEADER.match(header):
        attempts += 1
        retry = (
            f"{prompt}\n\nYour previous answer was:\n{message}\n\nIts first line does not "
            "follow `type(scope): summary` with one of the allowed types and at most 72 "
            "characters. Answer again with a valid message only."
        )
        message, model = _content(await llm.complete(retry, options))
        message = clean(message)
        header = message.splitlines()[0] if message else ""
    subject, _, body = message.partition("\n")
    return {
        "message": message,
        "subject": subject.strip(),
        "body": body.strip(),
        "valid": bool(HEADER.match(header)),
        "model": model,
        "attempts": attempts,
        "diffChars": len(diff),
        "diffCut": len(diff) > MAX_DIFF_CHARS,
    }


# --- CLI -------------------------------------------------------------------------------


async def command(ctx: Any, input: dict[str, Any]) -> str:
    """Prints the message on stdout (so `git commit -F <(python -m kblabs commit)` works)."""
    flags = input.get("flags") or {}
    cwd = Path(ctx.cwd)
    result = await propose(ctx, await staged_diff(cwd), flags.get("hint"))
    if not result["valid"]:
        await ctx.ui.warn("the LLM's message does not follow Conventional Commits; check it")
    if flags.get("apply"):
        if not result["valid"]:
            raise PluginError("MESSAGE_INVALID", "not committing an invalid message", 422)
        await _git(cwd, "commit", "-m", result["message"])
        await ctx.ui.success(f"committed: {result['subject']}")
    return str(result["message"])


# --- REST ------------------------------------------------------------------------------


async def propose_route(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    body = input.get("body") or {}
    if not isinstance(body, dict):
        raise PluginError("VALIDATION_ERROR", "the body must be a JSON object", 400)
    hint = body.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise PluginError("VALIDATION_ERROR", "hint must be a string", 400)
    diff = body.get("diff")
    if diff is not None:
        if not isinstance(diff, str) or not diff.strip():
            raise PluginError("VALIDATION_ERROR", "diff must be a non-empty string", 400)
        return await propose(ctx, diff, hint)
    base = Path(ctx.cwd).resolve()
    folder = (base / str(body.get("path") or ".")).resolve()
    if not folder.is_relative_to(base) or not folder.is_dir():
        raise PluginError(
            "VALIDATION_ERROR", f"path must be a folder inside the project ({base})", 400
        )
    return await propose(ctx, await staged_diff(folder), hint)
