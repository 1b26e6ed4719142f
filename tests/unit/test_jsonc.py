import pytest

from kblabs.config import jsonc


def test_comments_and_trailing_commas_are_accepted():
    text = """{
      // line comment
      "a": "http://x//not-a-comment", /* block
      comment */ "b": [1, 2,],
    }"""
    assert jsonc.loads(text) == {"a": "http://x//not-a-comment", "b": [1, 2]}


def test_escaped_quotes_inside_strings_do_not_end_the_string():
    assert jsonc.loads(r'{"a": "say \"//hi\"", "b": 1}') == {"a": 'say "//hi"', "b": 1}


def test_syntax_error_reports_the_original_line_and_column():
    text = '{\n  // comment\n  "a": 1\n  "b": 2\n}'
    with pytest.raises(jsonc.JsoncError) as caught:
        jsonc.loads(text)
    assert caught.value.line == 4
    assert caught.value.column == 3


def test_unterminated_block_comment_is_an_error():
    with pytest.raises(jsonc.JsoncError, match="unterminated"):
        jsonc.loads('{"a": 1 /* oops')
