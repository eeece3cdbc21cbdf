"""RULER's string match, from its definition: the fraction of expected answers present."""

from eval.scoring import string_match_all, string_match_part


def test_string_match_all():
    refs = ["1234567", "7654321"]
    assert string_match_all(" 1234567 and 7654321.", refs) == 1.0
    assert string_match_all(" 7654321 only", refs) == 0.5
    assert string_match_all(" 1234568, 7654320", refs) == 0.0
    assert string_match_all("", refs) == 0.0
    assert string_match_all(" ABCDE\nfghij", ["abcde", "FGHIJ"]) == 1.0  # case-insensitive


def test_string_match_part():
    assert string_match_part("the answer is paris", ["Paris", "London"]) == 1.0
    assert string_match_part("rome", ["Paris", "London"]) == 0.0
