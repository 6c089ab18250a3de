"""Ignore patterns: the gitignore-like subset documented in shipyard.images.ignore."""

from __future__ import annotations

from pathlib import Path

from shipyard.images.ignore import IgnoreRules


def test_name_pattern_matches_at_any_depth() -> None:
    rules = IgnoreRules(["*.pyc", "__pycache__", ".git"])
    assert rules.ignored("a.pyc", False)
    assert rules.ignored("pkg/sub/a.pyc", False)
    assert rules.ignored("pkg/__pycache__", True)
    assert rules.ignored(".git", True)
    assert not rules.ignored("a.py", False)
    assert not rules.ignored("pkg/a.pyc.txt", False)
    assert not rules.ignored("my.git", True)


def test_path_pattern_is_anchored_and_star_does_not_cross_slash() -> None:
    rules = IgnoreRules(["/build", "docs/*.md"])
    assert rules.ignored("build", True)
    assert not rules.ignored("src/build", True)
    assert rules.ignored("docs/a.md", False)
    assert not rules.ignored("docs/sub/a.md", False)
    assert not rules.ignored("other/docs/a.md", False)


def test_double_star_crosses_directories() -> None:
    rules = IgnoreRules(["**/fixtures", "logs/**", "a/**/z.txt"])
    assert rules.ignored("fixtures", True)
    assert rules.ignored("tests/unit/fixtures", True)
    assert rules.ignored("logs/2024/x.log", False)
    assert not rules.ignored("logs", True)
    assert rules.ignored("a/z.txt", False)
    assert rules.ignored("a/b/c/z.txt", False)


def test_trailing_slash_only_matches_directories() -> None:
    rules = IgnoreRules(["tmp/"])
    assert rules.ignored("tmp", True)
    assert rules.ignored("x/tmp", True)
    assert not rules.ignored("tmp", False)


def test_negation_last_match_wins() -> None:
    rules = IgnoreRules(["*.log", "!keep.log", "# a comment", "", "   "])
    assert rules.ignored("app.log", False)
    assert not rules.ignored("keep.log", False)
    assert not rules.ignored("sub/keep.log", False)
    assert rules.patterns == ["*.log", "!keep.log"]


def test_character_classes_and_question_mark() -> None:
    rules = IgnoreRules(["file?.txt", "[ab]*.dat", "[!x]y"])
    assert rules.ignored("file1.txt", False)
    assert not rules.ignored("file10.txt", False)
    assert rules.ignored("b-1.dat", False)
    assert not rules.ignored("c-1.dat", False)
    assert rules.ignored("zy", False)
    assert not rules.ignored("xy", False)


def test_for_context_reads_shipyardignore_after_spec_patterns(tmp: Path) -> None:
    (tmp / ".shipyardignore").write_text("# secrets stay out\n\nsecrets/\n!*.keep\n", encoding="utf-8")
    rules = IgnoreRules.for_context(tmp, ["*.keep", "*.tmp"])
    assert rules.ignored("secrets", True)
    assert rules.ignored("x.tmp", False)
    assert not rules.ignored("x.keep", False)  # the ignore file's negation comes later, so it wins
    assert rules.patterns == ["*.keep", "*.tmp", "secrets/", "!*.keep"]


def test_for_context_without_ignore_file(tmp: Path) -> None:
    rules = IgnoreRules.for_context(tmp, [])
    assert rules.patterns == []
    assert not rules.ignored(".shipyardignore", False)
