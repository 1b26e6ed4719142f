r"""Workflow expressions: the `${{ … }}` language of `if:`, `with:`, `env:`, `run:` and outputs.

A tokenizer and a recursive-descent parser build an AST once per distinct text (`parse` is
cached); the AST is evaluated against a mapping of root names to JSON-like values (None,
bool, int, float, str, list/tuple, Mapping). Nothing is ever passed to `eval`.

Public API: `ExpressionError`, `Expression`, `parse`, `evaluate`, `evaluate_condition`,
`interpolate`, `SecretMasker`.

Language (GitHub Actions semantics unless noted):

- Literals: `true`, `false`, `null`, `NaN`, `Infinity`; numbers `42`, `1.5`, `1e3`, `0xff`
  (`1` stays an int, `1.5`/`1e3` are floats); a leading `-` is the unary minus (`-1`, `-x`).
  Strings in single or double quotes. The quote is escaped by doubling it, as in GitHub
  Actions: `'it''s'`, `"a ""b"" c"`. Backslashes are literal (`'C:\dir'` is `C:\dir`),
  so Windows paths and regular expressions need no escaping.
- Names: the root of every path is a context (`inputs env trigger steps needs secrets run`
  and whatever else the caller passes); an unknown root is an error that names it and lists
  the known ones. Property names may contain `-` and start with a digit
  (`steps.build-1.outputs.version`, `steps.2nd.outputs.x`). Lookups are case-sensitive
  (GitHub's are not): our keys come from YAML, env vars and step outputs, which are.
- Access: `a.b.c`, `a['key']`, `a[0]`. Anything missing (absent key, index out of range,
  property of null, a string or a number) is `null`, never an error.
- Operators, tightest first: `( )`, `.`/`[ ]`, `!` and unary `-`, `< <= > >=`, `== !=`,
  `&&`, `||`. `&&` and `||` short-circuit and return an operand (`a || 'default'`), the
  others return booleans.
- Truthiness: `null`, `false`, `0`, `-0`, `NaN` and `''` are falsy; everything else
  (including `'0'`, `'false'`, `[]` and `{}`) is truthy.
- Comparison, as GitHub: values of the same kind compare directly; a number against a
  string compares as numbers (`'10' == 10`); `null` and booleans become numbers
  (`null` → 0, `true` → 1) when compared with another kind (`true == 1`, `null == 0`,
  `'' == null`); strings convert with `Number` rules (blank → 0, `0x1F`, `1e3`, `Infinity`;
  anything else → NaN). A NaN on either side makes every comparison false (so
  `'abc' != 1` is true and `'abc' < 1` false). Strings compare case-insensitively
  (`'ABC' == 'abc'`, `'a' < 'B'`). Arrays and objects are only equal to the very same
  instance; ordering them is false. Comparisons never raise.
- Functions (names are case-insensitive, arity is checked when parsing, an unknown
  function is a parse error that names it):
  `contains(haystack, needle)` — substring for a string/number/boolean haystack, element
  equality (the `==` above) for an array; `startsWith(s, prefix)`, `endsWith(s, suffix)` —
  case-insensitive, false for arrays/objects; `format('{0} and {1}', a, b)` — `{{` and `}}`
  are literal braces, a bad placeholder is an error; `toJSON(v)` — pretty JSON, 2-space
  indent; `fromJSON(s)` — invalid JSON is an error; `success()`, `failure()`,
  `cancelled()`, `always()` — read `job.status` from the context (`success`,
  `failure`/`failed`, `cancelled`/`canceled`; a missing `job.status` means `success`).
  `evaluate_condition` does not add GitHub's implicit `success() &&`: the engine decides
  what runs after a failure.
- Rendering a value into a string (interpolation, `format`, `contains`): null → `''`,
  booleans → `true`/`false`, integral floats without `.0` (`3.0` → `3`), `NaN`,
  `Infinity`, arrays and objects as compact JSON (`{"a":1}`).

Errors: every problem (syntax, unknown name or function, bad `format`, invalid `fromJSON`,
nesting deeper than 50 levels) raises `ExpressionError` naming the expression and the
column; evaluation never leaks a bare Python exception.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Expression",
    "ExpressionError",
    "SecretMasker",
    "evaluate",
    "evaluate_condition",
    "interpolate",
    "parse",
]

MAX_DEPTH = 50
"""Deepest nesting of parentheses, calls, indexes and unary operators that `parse` accepts."""

_SHOWN_CHARS = 200


class ExpressionError(Exception):
    """A syntax or evaluation error, with the expression text and where the problem is.

    `reason` is the bare problem, `expression` the text it was found in (for `interpolate`,
    the whole template string), `position` a 0-based offset into it, `line`/`column`
    1-based. The message reads like `unexpected ')' at column 6 in: a && )`.
    """

    def __init__(self, reason: str, expression: str, position: int) -> None:
        self.reason = reason
        self.expression = expression
        self.position = position
        self.line = expression.count("\n", 0, position) + 1
        line_start = expression.rfind("\n", 0, position) + 1
        self.column = position - line_start + 1
        line_end = expression.find("\n", position)
        shown = expression[line_start : line_end if line_end != -1 else len(expression)]
        if len(shown) > _SHOWN_CHARS:  # a window around the problem
            start = max(0, min(self.column - 1 - _SHOWN_CHARS // 2, len(shown) - _SHOWN_CHARS))
            end = start + _SHOWN_CHARS
            shown = ("…" if start else "") + shown[start:end] + ("…" if end < len(shown) else "")
        where = f"column {self.column}"
        if "\n" in expression:
            where = f"line {self.line}, {where}"
        super().__init__(f"{reason} at {where} in: {shown}")

    def __reduce__(self) -> tuple[type[ExpressionError], tuple[str, str, int]]:
        return (type(self), (self.reason, self.expression, self.position))


class _EvalError(Exception):
    """Raised inside the evaluator; `Expression.evaluate` turns it into `ExpressionError`."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


# --------------------------------------------------------------------------- values


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def _is_primitive(value: Any) -> bool:
    return _kind(value) in ("null", "boolean", "number", "string")


_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]+")
_OCTAL_RE = re.compile(r"0o[0-7]+")


def _parse_number(text: str) -> int | float:
    """A string as a number, like GitHub: blank → 0, unparsable → NaN."""
    text = text.strip()
    if not text:
        return 0
    if _INTEGER_RE.fullmatch(text):
        return int(text)
    if _DECIMAL_RE.fullmatch(text):
        return float(text)
    if _HEX_RE.fullmatch(text):
        return int(text[2:], 16)
    if _OCTAL_RE.fullmatch(text):
        return int(text[2:], 8)
    if text == "Infinity":
        return math.inf
    if text == "-Infinity":
        return -math.inf
    return math.nan


def _to_number(value: Any) -> int | float:
    kind = _kind(value)
    if kind == "null":
        return 0
    if kind == "boolean":
        return 1 if value else 0
    if kind == "number":
        return value  # type: ignore[no-any-return]
    if kind == "string":
        return _parse_number(value)
    return math.nan


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _truthy(value: Any) -> bool:
    kind = _kind(value)
    if kind == "null":
        return False
    if kind == "boolean":
        return bool(value)
    if kind == "number":
        return value != 0 and not _is_nan(value)
    if kind == "string":
        return value != ""
    return True


def _number_to_str(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _to_json(value: Any, *, pretty: bool) -> str:
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _to_str(value: Any) -> str:
    kind = _kind(value)
    if kind == "null":
        return ""
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "number":
        return _number_to_str(value)
    if kind == "string":
        return value  # type: ignore[no-any-return]
    return _to_json(value, pretty=False)


def _coerce(left: Any, right: Any) -> tuple[Any, Any, str, str]:
    """GitHub's type coercion before a comparison (objects are never coerced)."""
    left_kind, right_kind = _kind(left), _kind(right)
    if left_kind == right_kind:
        return left, right, left_kind, right_kind
    if left_kind == "number" and right_kind == "string":
        return left, _to_number(right), "number", "number"
    if left_kind == "string" and right_kind == "number":
        return _to_number(left), right, "number", "number"
    if left_kind in ("boolean", "null"):
        return _coerce(_to_number(left), right)
    if right_kind in ("boolean", "null"):
        return _coerce(left, _to_number(right))
    return left, right, left_kind, right_kind


def _equal(left: Any, right: Any) -> bool:
    left, right, kind, right_kind = _coerce(left, right)
    if kind != right_kind:
        return False
    if kind == "null":
        return True
    if kind == "number":
        return not (_is_nan(left) or _is_nan(right)) and bool(left == right)
    if kind == "string":
        return bool(left.casefold() == right.casefold())
    if kind == "boolean":
        return bool(left == right)
    return left is right


def _greater(left: Any, right: Any) -> bool:
    left, right, kind, right_kind = _coerce(left, right)
    if kind != right_kind:
        return False
    if kind == "number":
        return not (_is_nan(left) or _is_nan(right)) and bool(left > right)
    if kind == "string":
        return bool(left.casefold() > right.casefold())
    if kind == "boolean":
        return bool(left and not right)
    return False


def _less(left: Any, right: Any) -> bool:
    left, right, kind, right_kind = _coerce(left, right)
    if kind != right_kind:
        return False
    if kind == "number":
        return not (_is_nan(left) or _is_nan(right)) and bool(left < right)
    if kind == "string":
        return bool(left.casefold() < right.casefold())
    if kind == "boolean":
        return bool(right and not left)
    return False


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda left, right: not _equal(left, right),
    "<": _less,
    "<=": lambda left, right: _equal(left, right) or _less(left, right),
    ">": _greater,
    ">=": lambda left, right: _equal(left, right) or _greater(left, right),
}


def _get_property(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    return None


def _get_index(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(_to_str(key)) if _is_primitive(key) else None
    if isinstance(value, list | tuple) and _kind(key) in ("number", "string"):
        number = _to_number(key)
        if isinstance(number, float):
            if not number.is_integer():  # also NaN and infinities
                return None
            number = int(number)
        return value[number] if 0 <= number < len(value) else None
    return None


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number" "string" "name" "property" "op" "end"
    value: Any
    position: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind == "op":
            return repr(self.value)
        if self.kind == "string":
            return f"string {_to_json(self.value, pretty=False)}"
        if self.kind == "number":
            return f"number {_number_to_str(self.value)}"
        return f"name {self.value!r}"


_NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PROPERTY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_TWO_CHAR_OPS = ("==", "!=", "<=", ">=", "&&", "||")
_ONE_CHAR_OPS = "<>!-()[].,"
_HINTS = {
    "=": "unexpected '=' (compare with '==')",
    "&": "unexpected '&' (the operator is '&&')",
    "|": "unexpected '|' (the operator is '||')",
    "$": "unexpected '$' (write a bare expression or exactly one '${{ … }}')",
}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            tokens.append(_Token("end", None, n))
            return tokens
        ch = text[i]
        if tokens and tokens[-1].kind == "op" and tokens[-1].value == ".":
            match = _PROPERTY_RE.match(text, i)
            if match:
                tokens.append(_Token("property", match.group(), i))
                i = match.end()
                continue
        if ch in "'\"":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", value, i))
            i = end
        elif "0" <= ch <= "9":
            match = _NUMBER_RE.match(text, i)
            assert match is not None
            end = match.end()
            if end < n and (text[end].isalnum() or text[end] in "_."):
                raise ExpressionError("invalid number", text, i)
            literal = match.group()
            value_n: int | float
            if literal[:2] in ("0x", "0X"):
                value_n = int(literal[2:], 16)
            elif literal.isdigit():
                value_n = int(literal)
            else:
                value_n = float(literal)
            tokens.append(_Token("number", value_n, i))
            i = end
        elif (match := _NAME_RE.match(text, i)) is not None:
            tokens.append(_Token("name", match.group(), i))
            i = match.end()
        elif text.startswith(_TWO_CHAR_OPS, i):
            tokens.append(_Token("op", text[i : i + 2], i))
            i += 2
        elif ch in _ONE_CHAR_OPS:
            tokens.append(_Token("op", ch, i))
            i += 1
        else:
            raise ExpressionError(_HINTS.get(ch, f"unexpected character {ch!r}"), text, i)


def _read_string(text: str, start: int) -> tuple[str, int]:
    """The string literal opening at `start` (a doubled quote is one quote) and its end."""
    quote = text[start]
    parts: list[str] = []
    i = start + 1
    while True:
        close = text.find(quote, i)
        if close == -1:
            raise ExpressionError("unterminated string", text, start)
        parts.append(text[i:close])
        if text.startswith(quote, close + 1):
            parts.append(quote)
            i = close + 2
            continue
        return "".join(parts), close + 1


# --------------------------------------------------------------------------- AST


@dataclass(slots=True)
class _Env:
    context: Mapping[str, Any]


class _Node:
    __slots__ = ()
    position: int

    def evaluate(self, env: _Env) -> Any:
        raise NotImplementedError

    def collect(self, refs: set[str]) -> None:
        """Add the dotted paths this node reads to `refs`."""


@dataclass(frozen=True, slots=True)
class _Literal(_Node):
    position: int
    value: Any

    def evaluate(self, env: _Env) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class _Root(_Node):
    position: int
    name: str

    def evaluate(self, env: _Env) -> Any:
        try:
            return env.context[self.name]
        except KeyError:
            known = ", ".join(sorted(str(key) for key in env.context)) or "none"
            raise _EvalError(
                f"unknown name {self.name!r} (known: {known})", self.position
            ) from None

    def collect(self, refs: set[str]) -> None:
        refs.add(self.name)


@dataclass(frozen=True, slots=True)
class _Property:
    position: int
    name: str


@dataclass(frozen=True, slots=True)
class _Index:
    position: int
    key: _Node


@dataclass(frozen=True, slots=True)
class _Access(_Node):
    """`base.a['b'][0]`: one node for the whole chain, evaluated without recursion."""

    position: int
    base: _Node
    steps: tuple[_Property | _Index, ...]

    def evaluate(self, env: _Env) -> Any:
        value = self.base.evaluate(env)
        for step in self.steps:
            if isinstance(step, _Property):
                value = _get_property(value, step.name)
            else:
                value = _get_index(value, step.key.evaluate(env))
        return value

    def collect(self, refs: set[str]) -> None:
        path: list[str] | None = None
        if isinstance(self.base, _Root):
            path = [self.base.name]
        else:
            self.base.collect(refs)
        for step in self.steps:
            if isinstance(step, _Index):
                step.key.collect(refs)
            if path is None:
                continue
            if isinstance(step, _Property):
                path.append(step.name)
            elif isinstance(step.key, _Literal) and _kind(step.key.value) in ("string", "number"):
                path.append(_to_str(step.key.value))
            else:
                refs.add(".".join(path))
                path = None
        if path is not None:
            refs.add(".".join(path))


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    position: int
    operand: _Node

    def evaluate(self, env: _Env) -> Any:
        return not _truthy(self.operand.evaluate(env))

    def collect(self, refs: set[str]) -> None:
        self.operand.collect(refs)


@dataclass(frozen=True, slots=True)
class _Negate(_Node):
    position: int
    operand: _Node

    def evaluate(self, env: _Env) -> Any:
        return -_to_number(self.operand.evaluate(env))

    def collect(self, refs: set[str]) -> None:
        self.operand.collect(refs)


@dataclass(frozen=True, slots=True)
class _Compare(_Node):
    """`a < b <= c`: left-associative, evaluated left to right without recursion."""

    position: int
    first: _Node
    rest: tuple[tuple[str, _Node], ...]

    def evaluate(self, env: _Env) -> Any:
        value = self.first.evaluate(env)
        for op, node in self.rest:
            value = _COMPARISONS[op](value, node.evaluate(env))
        return value

    def collect(self, refs: set[str]) -> None:
        self.first.collect(refs)
        for _, node in self.rest:
            node.collect(refs)


@dataclass(frozen=True, slots=True)
class _Logical(_Node):
    """`a && b && c` or `a || b || c`: returns the operand that decided the result."""

    position: int
    op: str
    operands: tuple[_Node, ...]

    def evaluate(self, env: _Env) -> Any:
        stop_when = self.op == "||"
        value: Any = None
        for operand in self.operands:
            value = operand.evaluate(env)
            if _truthy(value) is stop_when:
                return value
        return value

    def collect(self, refs: set[str]) -> None:
        for operand in self.operands:
            operand.collect(refs)


@dataclass(frozen=True, slots=True)
class _Call(_Node):
    position: int
    function: _Function
    args: tuple[_Node, ...]

    def evaluate(self, env: _Env) -> Any:
        values = [arg.evaluate(env) for arg in self.args]
        return self.function.impl(env, values, self.position)

    def collect(self, refs: set[str]) -> None:
        for arg in self.args:
            arg.collect(refs)


# --------------------------------------------------------------------------- functions


def _fn_contains(env: _Env, args: list[Any], position: int) -> bool:
    haystack, needle = args
    if isinstance(haystack, list | tuple):
        return any(_equal(item, needle) for item in haystack)
    if _is_primitive(haystack) and _is_primitive(needle):
        return _to_str(needle).casefold() in _to_str(haystack).casefold()
    return False


def _fn_starts_with(env: _Env, args: list[Any], position: int) -> bool:
    text, prefix = args
    if _is_primitive(text) and _is_primitive(prefix):
        return _to_str(text).casefold().startswith(_to_str(prefix).casefold())
    return False


def _fn_ends_with(env: _Env, args: list[Any], position: int) -> bool:
    text, suffix = args
    if _is_primitive(text) and _is_primitive(suffix):
        return _to_str(text).casefold().endswith(_to_str(suffix).casefold())
    return False


def _fn_format(env: _Env, args: list[Any], position: int) -> str:
    template, values = _to_str(args[0]), args[1:]
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "{":
            if template.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            close = template.find("}", i)
            if close == -1:
                raise _EvalError(
                    f"format: unclosed '{{' at index {i} of the format string", position
                )
            spec = template[i + 1 : close]
            if not (spec.isascii() and spec.isdigit()):
                raise _EvalError(f"format: invalid placeholder '{{{spec}}}'", position)
            index = int(spec)
            if index >= len(values):
                raise _EvalError(
                    f"format: placeholder '{{{index}}}' has no argument "
                    f"({len(values)} given after the format string)",
                    position,
                )
            out.append(_to_str(values[index]))
            i = close + 1
        elif ch == "}":
            if not template.startswith("}}", i):
                raise _EvalError(
                    f"format: unexpected '}}' at index {i} (write '}}}}' for a brace)", position
                )
            out.append("}")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _fn_to_json(env: _Env, args: list[Any], position: int) -> str:
    try:
        return _to_json(args[0], pretty=True)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _EvalError(f"toJSON: cannot serialise the value ({exc})", position) from None


def _fn_from_json(env: _Env, args: list[Any], position: int) -> Any:
    text = _to_str(args[0])
    if not text.strip():
        raise _EvalError("fromJSON: empty input", position)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # The message never quotes the input: it may be a secret.
        raise _EvalError(
            f"fromJSON: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            position,
        ) from None
    except RecursionError:
        raise _EvalError("fromJSON: JSON nested too deeply", position) from None


_STATUSES = {
    "success": "success",
    "failure": "failure",
    "failed": "failure",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}


def _job_status(env: _Env, position: int) -> str:
    job = env.context.get("job")
    status = job.get("status") if isinstance(job, Mapping) else None
    if status is None:
        return "success"
    normalised = _STATUSES.get(status.lower()) if isinstance(status, str) else None
    if normalised is None:
        raise _EvalError(
            f"job.status must be success, failure or cancelled, not {status!r}", position
        )
    return normalised


def _fn_success(env: _Env, args: list[Any], position: int) -> bool:
    return _job_status(env, position) == "success"


def _fn_failure(env: _Env, args: list[Any], position: int) -> bool:
    return _job_status(env, position) == "failure"


def _fn_cancelled(env: _Env, args: list[Any], position: int) -> bool:
    return _job_status(env, position) == "cancelled"


def _fn_always(env: _Env, args: list[Any], position: int) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Function:
    name: str
    min_args: int
    max_args: int | None
    impl: Callable[[_Env, list[Any], int], Any]


_FUNCTIONS: dict[str, _Function] = {
    f.name.lower(): f
    for f in (
        _Function("contains", 2, 2, _fn_contains),
        _Function("startsWith", 2, 2, _fn_starts_with),
        _Function("endsWith", 2, 2, _fn_ends_with),
        _Function("format", 1, None, _fn_format),
        _Function("toJSON", 1, 1, _fn_to_json),
        _Function("fromJSON", 1, 1, _fn_from_json),
        _Function("success", 0, 0, _fn_success),
        _Function("failure", 0, 0, _fn_failure),
        _Function("cancelled", 0, 0, _fn_cancelled),
        _Function("always", 0, 0, _fn_always),
    )
}

_KEYWORDS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "NaN": math.nan,
    "Infinity": math.inf,
}


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent, one method per precedence level (loosest first)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def error(self, reason: str, position: int) -> ExpressionError:
        return ExpressionError(reason, self.text, position)

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, *ops: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "op" and token.value in ops

    def expect(self, op: str, context: str) -> _Token:
        token = self.peek()
        if not self.at(op):
            raise self.error(f"expected '{op}' {context}, found {token.describe()}", token.position)
        return self.advance()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(
                f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                self.peek().position,
            )

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.error("empty expression", 0)
        node = self.expression()
        token = self.peek()
        if token.kind != "end":
            raise self.error(
                f"unexpected {token.describe()} (expected an operator or the end)", token.position
            )
        return node

    def expression(self) -> _Node:
        self.enter()
        try:
            return self.logical("||", self.logical_and)
        finally:
            self.depth -= 1

    def logical_and(self) -> _Node:
        return self.logical("&&", self.equality)

    def logical(self, op: str, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        operands = [first]
        while self.at(op):
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return first
        return _Logical(first.position, op, tuple(operands))

    def equality(self) -> _Node:
        return self.comparison(("==", "!="), self.relational)

    def relational(self) -> _Node:
        return self.comparison(("<", "<=", ">", ">="), self.unary)

    def comparison(self, ops: tuple[str, ...], operand: Callable[[], _Node]) -> _Node:
        first = operand()
        rest: list[tuple[str, _Node]] = []
        while self.at(*ops):
            op = self.advance().value
            rest.append((op, operand()))
        if not rest:
            return first
        return _Compare(first.position, first, tuple(rest))

    def unary(self) -> _Node:
        if not self.at("!", "-"):
            return self.postfix()
        token = self.advance()
        self.enter()
        try:
            operand = self.unary()
        finally:
            self.depth -= 1
        if token.value == "!":
            return _Not(token.position, operand)
        if isinstance(operand, _Literal) and _kind(operand.value) == "number":
            return _Literal(token.position, -operand.value)
        return _Negate(token.position, operand)

    def postfix(self) -> _Node:
        base = self.primary()
        steps: list[_Property | _Index] = []
        while self.at(".", "["):
            token = self.advance()
            if token.value == ".":
                name = self.peek()
                if name.kind != "property":
                    raise self.error(
                        f"expected a property name after '.', found {name.describe()}",
                        name.position,
                    )
                self.advance()
                steps.append(_Property(name.position, name.value))
            else:
                key = self.expression()
                self.expect("]", f"to close '[' at column {token.position + 1}")
                steps.append(_Index(token.position, key))
        if not steps:
            return base
        return _Access(base.position, base, tuple(steps))

    def primary(self) -> _Node:
        token = self.advance()
        if token.kind in ("number", "string"):
            return _Literal(token.position, token.value)
        if token.kind == "name":
            if self.at("("):
                return self.call(token)
            if token.value in _KEYWORDS:
                return _Literal(token.position, _KEYWORDS[token.value])
            return _Root(token.position, token.value)
        if token.kind == "op" and token.value == "(":
            node = self.expression()
            self.expect(")", f"to close '(' at column {token.position + 1}")
            return node
        raise self.error(f"unexpected {token.describe()}", token.position)

    def call(self, name: _Token) -> _Node:
        function = _FUNCTIONS.get(name.value.lower())
        if function is None:
            known = ", ".join(f.name for f in _FUNCTIONS.values())
            raise self.error(f"unknown function {name.value!r} (known: {known})", name.position)
        self.advance()  # "("
        args: list[_Node] = []
        if not self.at(")"):
            args.append(self.expression())
            while self.at(","):
                self.advance()
                args.append(self.expression())
        self.expect(")", f"to close the call to {function.name}()")
        count = len(args)
        if count < function.min_args or (
            function.max_args is not None and count > function.max_args
        ):
            if function.max_args is None:
                wanted = f"at least {function.min_args}"
            elif function.min_args == function.max_args:
                wanted = str(function.min_args)
            else:
                wanted = f"{function.min_args} to {function.max_args}"
            plural = "" if wanted.endswith(" 1") or wanted == "1" else "s"
            raise self.error(
                f"{function.name}() takes {wanted} argument{plural}, got {count}", name.position
            )
        return _Call(name.position, function, tuple(args))


# --------------------------------------------------------------------------- public API


class Expression:
    """A parsed expression. Immutable and shared: `parse` caches it per text."""

    __slots__ = ("_node", "_references", "text")

    def __init__(self, text: str, node: _Node) -> None:
        self.text = text
        self._node = node
        refs: set[str] = set()
        node.collect(refs)
        self._references = frozenset(refs)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The value of the expression with `context` mapping root names to values."""
        try:
            return self._node.evaluate(_Env(context))
        except _EvalError as exc:
            raise ExpressionError(exc.reason, self.text, exc.position) from None
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError("value nested too deeply", self.text, 0) from None
        except Exception as exc:  # a broken Mapping in the context, an absurd number…
            raise ExpressionError(
                f"cannot evaluate ({type(exc).__name__}: {exc})", self.text, 0
            ) from exc

    def references(self) -> set[str]:
        """Dotted paths the expression reads, e.g. {"steps.build.outputs.version"}.

        A path stops before a computed index (`inputs[env.KEY].x` gives `inputs` and
        `env.KEY`); literal indexes join it (`inputs['name']` gives `inputs.name`).
        """
        return set(self._references)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Expression:
    return Expression(text, _Parser(text).parse())


def parse(text: str) -> Expression:
    """Parse a bare expression (no `${{ }}`); raises ExpressionError. Cached per text."""
    if not isinstance(text, str):
        raise TypeError(f"an expression is a str, not {type(text).__name__}")
    return _parse_cached(text)


def evaluate(text: str, context: Mapping[str, Any]) -> Any:
    """Parse and evaluate a bare expression."""
    return parse(text).evaluate(context)


@dataclass(frozen=True, slots=True)
class _Segment:
    start: int  # "${{"
    inner_start: int
    inner_end: int
    end: int  # after "}}"


def _segments(template: str) -> list[_Segment]:
    """Every `${{ … }}` in `template`; a `}}` inside a string literal does not close one."""
    segments: list[_Segment] = []
    i, n = 0, len(template)
    while (start := template.find("${{", i)) != -1:
        j, quote = start + 3, ""
        while j < n:
            ch = template[j]
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "'\"":
                quote = ch
            elif ch == "}" and template.startswith("}}", j):
                break
            j += 1
        else:
            raise ExpressionError("unterminated '${{' (no closing '}}')", template, start)
        segments.append(_Segment(start, start + 3, j, j + 2))
        i = j + 2
    return segments


def _evaluate_segment(template: str, segment: _Segment, context: Mapping[str, Any]) -> Any:
    inner = template[segment.inner_start : segment.inner_end]
    try:
        return parse(inner).evaluate(context)
    except ExpressionError as exc:
        raise ExpressionError(exc.reason, template, segment.inner_start + exc.position) from None


def _whole(template: str, segments: list[_Segment]) -> bool:
    return (
        len(segments) == 1
        and not template[: segments[0].start].strip()
        and not template[segments[0].end :].strip()
    )


def evaluate_condition(text: str, context: Mapping[str, Any]) -> bool:
    """An `if:` value: a bare expression or exactly one `${{ expr }}`, as a boolean.

    Text around a `${{ }}` (`${{ a }} == 'x'`) is an error rather than GitHub's
    always-true non-empty string.
    """
    if not text.strip().startswith("${{"):
        return _truthy(evaluate(text, context))
    segments = _segments(text)
    if not _whole(text, segments):
        after = text[segments[0].end :]
        stray = segments[0].end + len(after) - len(after.lstrip())
        raise ExpressionError(
            "a condition is one expression: text outside '${{ }}' is not allowed", text, stray
        )
    return _truthy(_evaluate_segment(text, segments[0], context))


def interpolate(value: Any, context: Mapping[str, Any]) -> Any:
    """Resolve every `${{ }}` in `value`, walking lists and dict values (keys are kept).

    A string that is exactly one `${{ expr }}` (whitespace around it allowed) becomes the
    expression's value with its type (a number stays a number, an object a dict — a deep
    copy, so callers may change it). Otherwise each `${{ }}` is replaced by the value
    rendered as text: null → '', booleans → true/false, lists and dicts as compact JSON.
    Strings without `${{` and non-container values are returned unchanged.
    """
    if isinstance(value, str):
        return _interpolate_string(value, context)
    if isinstance(value, Mapping):
        return {key: interpolate(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [interpolate(item, context) for item in value]
    return value


def _interpolate_string(template: str, context: Mapping[str, Any]) -> Any:
    if "${{" not in template:
        return template
    segments = _segments(template)
    if _whole(template, segments):
        result = _evaluate_segment(template, segments[0], context)
        return copy.deepcopy(result) if isinstance(result, Mapping | list | tuple) else result
    parts: list[str] = []
    last = 0
    for segment in segments:
        parts.append(template[last : segment.start])
        rendered = _evaluate_segment(template, segment, context)
        try:
            parts.append(_to_str(rendered))
        except (ValueError, TypeError, RecursionError) as exc:
            raise ExpressionError(
                f"cannot render the value as text ({exc})", template, segment.inner_start
            ) from None
        last = segment.end
    parts.append(template[last:])
    return "".join(parts)


_MIN_SECRET_LINE = 4


class SecretMasker:
    """Replaces secret values in text with `***` (for logs and events).

    Each non-empty secret is masked as is and in its JSON-escaped forms (how it appears
    inside a serialised event: quotes, backslashes, newlines and non-ASCII escaped). A
    multi-line secret also has each of its lines (4 characters or more) masked, since logs
    arrive line by line. Longer values are replaced first, so a secret that contains another
    is masked whole.
    """

    MASK = "***"

    def __init__(self, secrets: Iterable[str | None]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
            if "\n" in secret or "\r" in secret:
                forms.update(
                    line.strip()
                    for line in secret.splitlines()
                    if len(line.strip()) >= _MIN_SECRET_LINE
                )
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        """`text` with every occurrence of every secret replaced by `***`."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(self.MASK, text)
