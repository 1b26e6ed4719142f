"""Workflow expressions: parser, GitHub-style semantics, interpolation and secret masking."""

import json
import math
import pickle
import random
from types import MappingProxyType
from typing import Any

import pytest

from kblabs.workflow.expressions import (
    Expression,
    ExpressionError,
    SecretMasker,
    evaluate,
    evaluate_condition,
    interpolate,
    parse,
)

CONTEXT: dict[str, Any] = {
    "inputs": {
        "name": "World",
        "count": 3,
        "flag": True,
        "off": False,
        "empty": "",
        "zero": 0,
        "ratio": 1.5,
        "list": [1, "two", None],
        "text": "Hello World",
        "my-key": "dashed",
    },
    "env": {"STAGE": "prod", "KEYNAME": "name", "JSON": '{"a": {"b": 7}}'},
    "trigger": {"type": "manual", "actor": "ann", "payload": {"ref": "main"}},
    "steps": {
        "build": {"outputs": {"version": "1.2.3", "files": 3, "meta": {"tags": ["a", "b"]}}},
        "build-2": {"outputs": {"ok": True}},
        "2nd": {"outputs": {"x": "y"}},
    },
    "needs": {"collect": {"outputs": {"count": "10"}}},
    "secrets": {"TOKEN": "s3cr3t"},
    "run": {"id": "r-1"},
}


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same type all the way down (True is not 1, 1.0 is not 1)."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected
        )
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    return bool(actual == expected)


VALUES = [
    # literals
    ("true", True),
    ("false", False),
    ("null", None),
    ("42", 42),
    ("1.5", 1.5),
    ("1e3", 1000.0),
    ("0xff", 255),
    ("-7", -7),
    ("- 2.5", -2.5),
    ("Infinity", math.inf),
    ("'it''s'", "it's"),
    ('"a ""b"" c"', 'a "b" c'),
    ("'say \"hi\"'", 'say "hi"'),
    ('"it\'s"', "it's"),
    ("''", ""),
    ("'C:\\dir\\x'", "C:\\dir\\x"),
    ("'ünïcode ✓'", "ünïcode ✓"),
    # property and index access
    ("inputs.name", "World"),
    ("steps.build.outputs.version", "1.2.3"),
    ("steps.build-2.outputs.ok", True),
    ("steps.2nd.outputs.x", "y"),
    ("inputs['name']", "World"),
    ('inputs["name"]', "World"),
    ("inputs['my-key']", "dashed"),
    ("inputs.my-key", "dashed"),
    ("steps['build'].outputs['files']", 3),
    ("inputs.list[1]", "two"),
    ("inputs.list[1.0]", "two"),
    ("inputs.list['0']", 1),
    ("steps.build.outputs.meta.tags[0]", "a"),
    ("trigger.payload.ref", "main"),
    ("needs.collect.outputs.count", "10"),
    ("inputs[env.KEYNAME]", "World"),
    ("inputs . name", "World"),
    ("steps.build.outputs", {"version": "1.2.3", "files": 3, "meta": {"tags": ["a", "b"]}}),
    ("fromJSON(env.JSON).a.b", 7),
    # anything missing is null
    ("inputs.missing", None),
    ("inputs.missing.deeper.still", None),
    ("steps.nope.outputs.version", None),
    ("inputs.list[9]", None),
    ("inputs.list[-1]", None),
    ("inputs.list[0.5]", None),
    ("inputs.list['x']", None),
    ("inputs.list[null]", None),
    ("inputs.list.x", None),
    ("inputs.name.length", None),
    ("inputs.name[0]", None),
    ("inputs.count.x", None),
    ("null.x", None),
    ("inputs[inputs.missing]", None),
    ("inputs.Name", None),
    # not and truthiness
    ("!true", False),
    ("!null", True),
    ("!0", True),
    ("!''", True),
    ("!'0'", False),
    ("!'false'", False),
    ("!inputs.list", False),
    ("!fromJSON('{}')", False),
    ("!fromJSON('[]')", False),
    ("!NaN", True),
    ("!-0", True),
    ("!!inputs.name", True),
    # && and || return an operand and short-circuit
    ("inputs.name && inputs.count", 3),
    ("inputs.empty && inputs.count", ""),
    ("inputs.missing || 'default'", "default"),
    ("inputs.name || 'default'", "World"),
    ("inputs.zero || inputs.empty", ""),
    ("null && false", None),
    ("1 && 2 && 3", 3),
    ("0 || null || false", False),
    ("true || nosuch.x", True),
    ("false && nosuch.x", False),
    ("inputs.flag || bogus.y", True),
    # precedence: ! > relational > equality > && > ||
    ("true || false && false", True),
    ("false && true || true", True),
    ("(true || false) && false", False),
    ("!'a' == true", False),
    ("3 == 1 < 2", False),
    ("2 > 1 > 0", True),
    ("1 < 2 == 2 < 3", True),
    ("-inputs.count < 0", True),
    ("!(1 == 2)", True),
    ("true && !false", True),
    ("inputs.name == 'world' && inputs.count > 2 || false", True),
    ("inputs.name\n  == 'WORLD'", True),
    # comparison with GitHub coercion
    ("1 == 1.0", True),
    ("'10' == 10", True),
    ("10 == '1e1'", True),
    ("'0x10' == 16", True),
    ("' 5 ' == 5", True),
    ("'' == 0", True),
    ("'abc' == 0", False),
    ("'abc' != 0", True),
    ("null == 0", True),
    ("null == false", True),
    ("null == ''", True),
    ("null == null", True),
    ("null == 'null'", False),
    ("true == 1", True),
    ("true == '1'", True),
    ("false == 'false'", False),
    ("true == 'true'", False),
    ("'ABC' == 'abc'", True),
    ("'abc' != 'ABC'", False),
    ("NaN == NaN", False),
    ("NaN != NaN", True),
    ("'a' < 'B'", True),
    ("'b' > 'A'", True),
    ("'abc' <= 'ABC'", True),
    ("2 < 10", True),
    ("'2' < '10'", False),
    ("'2' < 10", True),
    ("'abc' < 1", False),
    ("'abc' >= 1", False),
    ("true > false", True),
    ("false < true", True),
    ("true >= true", True),
    ("null < 1", True),
    ("null <= null", True),
    ("null < null", False),
    ("inputs.list == inputs.list", True),
    ("fromJSON('[1]') == fromJSON('[1]')", False),
    ("inputs.list == 'x'", False),
    ("inputs.list != inputs.list", False),
    ("inputs.list > 0", False),
    ("inputs.list <= inputs.list", True),
    ("Infinity > 1e308", True),
    ("-Infinity < 0", True),
    ("inputs.ratio >= 1.5", True),
    ("steps.build.outputs.files == '3'", True),
    ("needs.collect.outputs.count > 9", True),
    ("needs.collect.outputs.count > '9'", False),
    ("inputs.off != true", True),
    # unary minus
    ("-inputs.count", -3),
    ("-'2.5'", -2.5),
    ("-null", 0),
    ("--3", 3),
    ("-true", -1),
    # contains
    ("contains('Hello World', 'WORLD')", True),
    ("contains(inputs.text, 'xyz')", False),
    ("contains(inputs.list, 'TWO')", True),
    ("contains(inputs.list, '1')", True),
    ("contains(inputs.list, null)", True),
    ("contains(inputs.list, 3)", False),
    ("contains(12345, 34)", True),
    ("contains(true, 'ru')", True),
    ("contains(fromJSON('{\"a\": 1}'), 'a')", False),
    ("contains('abc', inputs.list)", False),
    ("contains('abc', '')", True),
    ("contains(null, 'a')", False),
    ("contains(steps.build.outputs.meta.tags, 'b')", True),
    ("CONTAINS('a', 'A')", True),
    # startsWith / endsWith
    ("startsWith('Hello', 'he')", True),
    ("startsWith('Hello', 'lo')", False),
    ("endsWith('Hello', 'LO')", True),
    ("endsWith('Hello', 'he')", False),
    ("startsWith(123, 1)", True),
    ("endsWith(inputs.list, 'x')", False),
    ("startsWith(steps.build.outputs.version, '1.')", True),
    ("startswith('a', 'A')", True),
    # format
    ("format('{0} {1}!', 'Hello', inputs.name)", "Hello World!"),
    ("format('{{0}} is {0}', 1)", "{0} is 1"),
    ("format('{1}{0}{1}', 'a', 'b')", "bab"),
    ("format('n={0} b={1} x={2} y={3}', null, true, 1.0, 0.25)", "n= b=true x=1 y=0.25"),
    ("format('{0}', steps.build.outputs.meta)", '{"tags":["a","b"]}'),
    ("format('}}{{')", "}{"),
    ("format('plain')", "plain"),
    ("format('{0}', 'a', 'unused')", "a"),
    # toJSON / fromJSON
    ("toJSON(steps.build.outputs.meta)", '{\n  "tags": [\n    "a",\n    "b"\n  ]\n}'),
    ("toJSON('a\"b')", '"a\\"b"'),
    ("toJSON(null)", "null"),
    ("toJSON(1.5)", "1.5"),
    ("toJSON(true)", "true"),
    ("toJSON('ü')", '"ü"'),
    ("fromJSON('{\"a\": [1, 2.5, null]}')", {"a": [1, 2.5, None]}),
    ("fromJSON('true')", True),
    ("fromJSON(' 42 ')", 42),
    ("fromJSON('\"x\"')", "x"),
    ("fromJSON(toJSON(inputs.list))", [1, "two", None]),
    ("fromJSON(needs.collect.outputs.count) > 9", True),
    ("fromJSON(steps.build.outputs.meta)", {"tags": ["a", "b"]}),
    # always
    ("always()", True),
    ("always() && inputs.count", 3),
]


@pytest.mark.parametrize(("text", "expected"), VALUES)
def test_value(text: str, expected: Any) -> None:
    actual = evaluate(text, CONTEXT)
    assert same(actual, expected), f"{text!r} gave {actual!r}, expected {expected!r}"


@pytest.mark.parametrize("text", ["NaN", "-'abc'", "-inputs.list", "-fromJSON('{}')"])
def test_value_is_nan(text: str) -> None:
    assert math.isnan(evaluate(text, CONTEXT))


def test_short_circuit_does_not_evaluate_the_other_side() -> None:
    # The right-hand sides would fail (unknown name, invalid JSON) if evaluated.
    assert evaluate("inputs.name || fromJSON('{')", CONTEXT) == "World"
    assert evaluate("inputs.empty && nosuch.x", CONTEXT) == ""
    with pytest.raises(ExpressionError, match="unknown name 'nosuch'"):
        evaluate("inputs.empty || nosuch.x", CONTEXT)


STATUSES = [
    # job.status, success(), failure(), cancelled(), always()
    (None, True, False, False, True),
    ("success", True, False, False, True),
    ("failure", False, True, False, True),
    ("failed", False, True, False, True),
    ("FAILURE", False, True, False, True),
    ("cancelled", False, False, True, True),
    ("canceled", False, False, True, True),
]


@pytest.mark.parametrize(("status", "success", "failure", "cancelled", "always"), STATUSES)
def test_status_functions_read_job_status(
    status: str | None, success: bool, failure: bool, cancelled: bool, always: bool
) -> None:
    context = dict(CONTEXT)
    if status is not None:
        context["job"] = {"status": status}
    results = [
        evaluate(f"{name}()", context) for name in ("success", "failure", "cancelled", "always")
    ]
    assert results == [success, failure, cancelled, always]
    assert evaluate_condition("${{ failure() || cancelled() }}", context) is (failure or cancelled)


def test_status_functions_refuse_an_unknown_status() -> None:
    with pytest.raises(ExpressionError, match=r"job\.status must be success, failure or cancelled"):
        evaluate("success()", {"job": {"status": "weird"}})


REFERENCES = [
    (
        "steps.build.outputs.version == inputs.name",
        {"steps.build.outputs.version", "inputs.name"},
    ),
    ("inputs['my-key']", {"inputs.my-key"}),
    ("inputs.list[0]", {"inputs.list.0"}),
    ("steps.build.outputs[inputs.key].x", {"steps.build.outputs", "inputs.key"}),
    ("needs.collect.outputs.count > 1", {"needs.collect.outputs.count"}),
    ("format('{0}', secrets.TOKEN)", {"secrets.TOKEN"}),
    ("toJSON(steps)", {"steps"}),
    ("fromJSON(env.JSON).a.b", {"env.JSON"}),
    ("!(inputs.a || -inputs.b < 2)", {"inputs.a", "inputs.b"}),
    ("success() || failure() && true", set()),
    ("1 == 1", set()),
]


@pytest.mark.parametrize(("text", "expected"), REFERENCES)
def test_references(text: str, expected: set[str]) -> None:
    assert parse(text).references() == expected


def test_references_returns_a_copy() -> None:
    expression = parse("inputs.name")
    expression.references().add("junk")
    assert expression.references() == {"inputs.name"}


def test_parse_is_cached_and_reusable_with_other_contexts() -> None:
    expression = parse("inputs.name == 'x'")
    assert isinstance(expression, Expression)
    assert parse("inputs.name == 'x'") is expression
    assert expression.evaluate({"inputs": {"name": "X"}}) is True
    assert expression.evaluate({"inputs": {}}) is False


def test_context_may_be_any_mapping() -> None:
    context = MappingProxyType({"inputs": MappingProxyType({"name": "ro"})})
    assert evaluate("inputs.name", context) == "ro"
    assert evaluate("inputs['name']", context) == "ro"


def test_parse_refuses_a_non_string() -> None:
    with pytest.raises(TypeError):
        parse(42)  # type: ignore[arg-type]


INTERPOLATIONS = [
    # exactly one expression keeps its type
    ("${{ inputs.count }}", 3),
    ("  ${{ inputs.flag }}  ", True),
    ("${{ inputs.off }}", False),
    ("${{ inputs.ratio }}", 1.5),
    ("${{ steps.build.outputs.meta }}", {"tags": ["a", "b"]}),
    ("${{ inputs.list }}", [1, "two", None]),
    ("${{ inputs.missing }}", None),
    ("${{ fromJSON('[1,2]') }}", [1, 2]),
    ("${{inputs.name}}", "World"),
    ("${{ '}}' }}", "}}"),
    # text around: rendered into the string
    ("count=${{ inputs.count }}", "count=3"),
    ("${{ inputs.count }}${{ inputs.count }}", "33"),
    ("a ${{ inputs.flag }} b ${{ inputs.off }}", "a true b false"),
    ("[${{ inputs.missing }}]", "[]"),
    ("meta=${{ steps.build.outputs.meta }}", 'meta={"tags":["a","b"]}'),
    ("list=${{ inputs.list }}", 'list=[1,"two",null]'),
    ("x=${{ 1.0 }} y=${{ 0.5 }} z=${{ 1e20 }}", "x=1 y=0.5 z=1e+20"),
    ("${{ format('{{}}') }} and ${{ '}}' }}", "{} and }}"),
    ("Hello ${{inputs.name}}!", "Hello World!"),
    ("${{ inputs.name }} ${{ 'ü' }}", "World ü"),
    ("say ${{ 'it''s' }}", "say it's"),
    ("line1\n${{ inputs.name }}\nline3", "line1\nWorld\nline3"),
    ("${{ '${{' }} literal", "${{ literal"),
    ("v${{ steps.build.outputs.version }}-${{ run.id }}", "v1.2.3-r-1"),
    # nothing to do
    ("no expressions here", "no expressions here"),
    ("$ {{ x }}", "$ {{ x }}"),
    ("${ inputs.name }", "${ inputs.name }"),
    ("", ""),
    (42, 42),
    (None, None),
    (True, True),
    (1.5, 1.5),
]


@pytest.mark.parametrize(("value", "expected"), INTERPOLATIONS)
def test_interpolate(value: Any, expected: Any) -> None:
    actual = interpolate(value, CONTEXT)
    assert same(actual, expected), f"{value!r} gave {actual!r}, expected {expected!r}"


def test_interpolate_walks_lists_and_dict_values_but_not_keys() -> None:
    value = {
        "a": "${{ inputs.count }}",
        "b": ["${{ inputs.name }}", {"c": "v${{ inputs.count }}"}, 7],
        "${{ inputs.name }}": "key kept",
        "t": ("${{ inputs.flag }}",),
    }
    assert interpolate(value, CONTEXT) == {
        "a": 3,
        "b": ["World", {"c": "v3"}, 7],
        "${{ inputs.name }}": "key kept",
        "t": [True],
    }
    assert value["a"] == "${{ inputs.count }}"  # the template itself is untouched


def test_interpolate_returns_a_copy_of_objects() -> None:
    result = interpolate("${{ steps.build.outputs.meta }}", CONTEXT)
    result["tags"].append("changed")
    assert CONTEXT["steps"]["build"]["outputs"]["meta"] == {"tags": ["a", "b"]}


CONDITIONS = [
    ("${{ inputs.flag }}", True),
    ("inputs.flag", True),
    ("  ${{ inputs.off }}  ", False),
    ("inputs.name == 'world'", True),
    ("${{ inputs.count > 2 }}", True),
    ("${{ inputs.off != true }}", True),
    ("inputs.empty", False),
    ("inputs.missing", False),
    ("inputs.zero", False),
    ("NaN", False),
    ("'false'", True),
    ("inputs.list", True),
    ("inputs.name && inputs.zero", False),
    ("always()", True),
    ("${{ failure() }}", False),
    ("inputs.name == '${{ x }}'", False),
]


@pytest.mark.parametrize(("text", "expected"), CONDITIONS)
def test_evaluate_condition(text: str, expected: bool) -> None:
    assert evaluate_condition(text, CONTEXT) is expected


SYNTAX_ERRORS = [
    ("inputs.name ==", "unexpected end of expression", 15),
    ("== 1", "unexpected '=='", 1),
    ("(1 || 2", "expected ')' to close '(' at column 1, found end of expression", 8),
    ("1 || 2)", "unexpected ')' (expected an operator or the end)", 7),
    ("inputs.list[0", "expected ']' to close '[' at column 12", 14),
    ("'abc", "unterminated string", 1),
    ("x == 'it''s", "unterminated string", 6),
    ('"abc', "unterminated string", 1),
    ("a b", "unexpected name 'b'", 3),
    ("1 2", "unexpected number 2", 3),
    ("'a' 'b'", 'unexpected string "b"', 5),
    ("a = 1", "unexpected '=' (compare with '==')", 3),
    ("a & b", "the operator is '&&'", 3),
    ("a | b", "the operator is '||'", 3),
    ("a # b", "unexpected character '#'", 3),
    ("a ; b", "unexpected character ';'", 3),
    ("${{ a }}", "unexpected '$'", 1),
    ("", "empty expression", 1),
    ("   ", "empty expression", 1),
    ("inputs.", "expected a property name after '.', found end of expression", 8),
    ("inputs.[0]", "expected a property name after '.', found '['", 8),
    ("inputs.'x'", "expected a property name after '.', found string", 8),
    ("1abc", "invalid number", 1),
    ("1.2.3", "invalid number", 1),
    ("0x", "invalid number", 1),
    ("nosuch(1)", "unknown function 'nosuch' (known: contains, startsWith", 1),
    ("true && bogus()", "unknown function 'bogus'", 9),
    ("contains('a')", "contains() takes 2 arguments, got 1", 1),
    ("toJSON()", "toJSON() takes 1 argument, got 0", 1),
    ("format()", "format() takes at least 1 argument, got 0", 1),
    ("success(1)", "success() takes 0 arguments, got 1", 1),
    ("contains('a', 'b',)", "unexpected ')'", 19),
    ("contains('a' 'b')", "expected ')' to close the call to contains(), found string", 14),
    ("!", "unexpected end of expression", 2),
    ("a[]", "unexpected ']'", 3),
    ("()", "unexpected ')'", 2),
    ("1 <", "unexpected end of expression", 4),
    ("a && || b", "unexpected '||'", 6),
]


@pytest.mark.parametrize(("text", "reason", "column"), SYNTAX_ERRORS)
def test_syntax_error(text: str, reason: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert reason in caught.value.reason
    assert caught.value.column == column
    assert caught.value.line == 1
    assert caught.value.expression == text
    assert f"at column {column} in: {text}" in str(caught.value)


EVALUATION_ERRORS = [
    (
        "nosuch.x",
        "unknown name 'nosuch' (known: env, inputs, needs, run, secrets, steps, trigger)",
        1,
    ),
    ("inputs.name == matrix.x", "unknown name 'matrix'", 16),
    ("inputs.empty || nosuch", "unknown name 'nosuch'", 17),
    ("format('{0} {1}', 'a')", "format: placeholder '{1}' has no argument (1 given", 1),
    ("format('{x}', 1)", "format: invalid placeholder '{x}'", 1),
    ("format('{-1}', 1)", "format: invalid placeholder '{-1}'", 1),
    ("format('{0', 1)", "format: unclosed '{' at index 0", 1),
    ("format('a } b')", "format: unexpected '}' at index 2", 1),
    ("1 == 1 && fromJSON('{bad')", "fromJSON: invalid JSON (Expecting property name", 11),
    ("fromJSON('')", "fromJSON: empty input", 1),
    ("fromJSON(inputs.missing)", "fromJSON: empty input", 1),
]


@pytest.mark.parametrize(("text", "reason", "column"), EVALUATION_ERRORS)
def test_evaluation_error(text: str, reason: str, column: int) -> None:
    expression = parse(text)  # parses fine; fails only against a context
    with pytest.raises(ExpressionError) as caught:
        expression.evaluate(CONTEXT)
    assert reason in caught.value.reason
    assert caught.value.column == column
    assert text in str(caught.value)


def test_unknown_name_with_an_empty_context() -> None:
    with pytest.raises(ExpressionError, match=r"unknown name 'inputs' \(known: none\)"):
        evaluate("inputs.x", {})


def test_invalid_json_error_does_not_quote_the_input() -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate("fromJSON(secrets.TOKEN)", CONTEXT)
    assert "s3cr3t" not in str(caught.value)


INTERPOLATION_ERRORS = [
    ("echo ${{ inputs.name", "unterminated '${{' (no closing '}}')", 1, 6),
    ("a ${{ 'x }}", "unterminated '${{'", 1, 3),
    ("ok ${{ 1 }} then ${{ 2", "unterminated '${{'", 1, 18),
    ("x=${{ inputs.name == }}", "unexpected end of expression", 1, 22),
    ("${{ }}", "empty expression", 1, 4),
    ("line one\nrun ${{ nosuch.x }}", "unknown name 'nosuch'", 2, 9),
    ("a\nb\n  ${{ 1 2 }}", "unexpected number 2", 3, 9),
    ("${{ format('{1}', 1) }}", "format: placeholder '{1}'", 1, 5),
]


@pytest.mark.parametrize(("template", "reason", "line", "column"), INTERPOLATION_ERRORS)
def test_interpolation_error(template: str, reason: str, line: int, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        interpolate({"with": [template]}, CONTEXT)
    error = caught.value
    assert reason in error.reason
    assert (error.line, error.column) == (line, column)
    assert error.expression == template
    where = f"line {line}, column {column}" if "\n" in template else f"column {column}"
    assert f" at {where} in: " in str(error)


CONDITION_ERRORS = [
    ("${{ inputs.flag }} == true", "text outside '${{ }}' is not allowed", 20),
    ("${{ inputs.a }} ${{ inputs.b }}", "text outside '${{ }}' is not allowed", 17),
    ("", "empty expression", 1),
    ("${{ }}", "empty expression", 4),
    ("${{ inputs.flag", "unterminated '${{'", 1),
    ("inputs.flag == ${{ true }}", "unexpected '$'", 16),
]


@pytest.mark.parametrize(("text", "reason", "column"), CONDITION_ERRORS)
def test_condition_error(text: str, reason: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate_condition(text, CONTEXT)
    assert reason in caught.value.reason
    assert caught.value.column == column


def test_error_message_attributes_and_pickling() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse("a &&")
    error = caught.value
    assert str(error) == "unexpected end of expression at column 5 in: a &&"
    assert (error.reason, error.expression, error.position) == (
        "unexpected end of expression",
        "a &&",
        4,
    )
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ExpressionError)
    assert (str(copy), copy.column) == (str(error), 5)


def test_long_expression_is_shortened_in_the_message() -> None:
    text = "inputs.x == '" + "y" * 500 + "' &&"
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    message = str(caught.value)
    assert len(message) < 300
    assert message.endswith("yyy' &&")  # the window shows where the problem is
    assert caught.value.column == len(text) + 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(" * 40 + "1" + ")" * 40, 1),
        ("!" * 40 + "true", True),
        (" || ".join(["inputs.missing"] * 3000) + " || 'end'", "end"),
        (" && ".join(["1"] * 3000), 1),
        (" == ".join(["1"] * 3000), True),
        ("inputs" + ".x" * 3000, None),
    ],
    ids=["parens-40", "not-40", "or-chain", "and-chain", "eq-chain", "long-path"],
)
def test_long_chains_and_moderate_nesting(text: str, expected: Any) -> None:
    assert same(evaluate(text, CONTEXT), expected)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 60 + "1" + ")" * 60,
        "!" * 60 + "true",
        "contains(" * 60 + "1" + ", 1)" * 60,
        "inputs" + "[inputs" * 60 + "]" * 60,
        "(" * 5000,
    ],
    ids=["parens", "not", "calls", "indexes", "unclosed"],
)
def test_deep_nesting_is_an_expression_error(text: str) -> None:
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse(text)


def test_random_input_never_raises_anything_but_expression_error() -> None:
    pieces = [
        "inputs", "inputs.name", "inputs.list", "steps.build.outputs", "nosuch", ".", "[", "]",
        "(", ")", ",", "!", "-", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "'a'", '"b"',
        "''", "'", "1", "1.5", "0x1", "NaN", "null", "true", "contains(", "format(",
        "fromJSON(", "toJSON(", "startsWith(", "success()", "'{0}'", "'{'", "}", "{", " ",
        "${{", "}}", "1e999", "-0",
    ]  # fmt: skip
    rng = random.Random(6)
    outcomes = {"value": 0, "error": 0}
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        try:
            evaluate(text, CONTEXT)
            interpolate("x ${{ " + text + " }}", CONTEXT)
            outcomes["value"] += 1
        except ExpressionError:
            outcomes["error"] += 1
    assert outcomes["value"] > 100 and outcomes["error"] > 100


MASKING = [
    (["s3cr3t"], "token=s3cr3t end", "token=*** end"),
    (["s3cr3t"], "s3cr3ts3cr3t", "******"),
    (["abc", "abcdef"], "abcdef abc", "*** ***"),
    (["abcdef", "abc"], "xabcdefx abc", "x***x ***"),
    (["a.b*c"], "a.b*c axbbc", "*** axbbc"),
    ([""], "text", "text"),
    ([None], "text", "text"),
    ([], "text", "text"),
    (["s3cr3t"], "", ""),
    (['pa"ss\\word'], json.dumps({"p": 'pa"ss\\word'}), '{"p": "***"}'),
    (["line1\nline2"], json.dumps("log line1\nline2"), '"log ***"'),
    (["ünï"], json.dumps("x ünï"), '"x ***"'),
    (["ünï"], json.dumps("x ünï", ensure_ascii=False), '"x ***"'),
    (["-----BEGIN-----\nAAAABBBB\n-----END-----"], "got AAAABBBB\n", "got ***\n"),
    (["longline1\nab"], "ab cd", "ab cd"),
]


@pytest.mark.parametrize(("secrets", "text", "expected"), MASKING)
def test_secret_masker(secrets: list[str | None], text: str, expected: str) -> None:
    assert SecretMasker(secrets).mask(text) == expected


def test_masker_hides_interpolated_secrets() -> None:
    masker = SecretMasker(CONTEXT["secrets"].values())
    line = interpolate("curl -H 'Authorization: ${{ secrets.TOKEN }}'", CONTEXT)
    assert masker.mask(line) == "curl -H 'Authorization: ***'"
    event = json.dumps({"with": interpolate({"t": "${{ secrets }}"}, CONTEXT)})
    assert "s3cr3t" not in masker.mask(event)
