"""Tests for core.sentences: built-in sentence generation and user sentence files (no torch, no ComfyUI needed)."""

import re

import pytest

from core.sentences import (
    available_sentence_count,
    check_sentences,
    generate_sentences,
    indefinite_article,
    parse_sentences,
    read_sentence_file,
    sentence_file_label,
    subject_kind,
)

# "a" before a vowel-sound word, "an" before a consonant-sound word (a few exceptions handled by the module).
_BAD_ARTICLE = re.compile(r"\b(?:a\s+(?:apple|oil|orange|old|elegant|unusual|adorable|ordinary|image|empty|8)"
                          r"|an\s+(?:cat|photo|small|large|colorful|unicorn|detailed|painting|dog))\b", re.IGNORECASE)


def _articles_ok(sentences):
    return [s for s in sentences if _BAD_ARTICLE.search(s)]


def test_default_gives_1000_distinct_sentences_with_the_subject():
    sentences = generate_sentences("cat")
    assert len(sentences) == 1000
    assert len(set(sentences)) == 1000
    assert all("cat" in s for s in sentences)
    assert all(isinstance(s, str) and s.endswith(".") and s[0].isupper() for s in sentences)


def test_sentences_are_varied():
    sentences = generate_sentences("cat", 1000)
    # Not one fixed frame: many different openings and endings.
    openings = {" ".join(s.split()[:3]) for s in sentences}
    endings = {" ".join(s.split()[-2:]) for s in sentences}
    assert len(openings) >= 20
    assert len(endings) >= 20
    # No single framing dominates.
    frames = [s.split(" cat")[0] for s in sentences]
    most = max(frames.count(f) for f in set(frames))
    assert most < 200


def test_deterministic_for_a_seed_and_seed_dependent():
    a = generate_sentences("cat", 500, seed=7)
    b = generate_sentences("cat", 500, seed=7)
    c = generate_sentences("cat", 500, seed=8)
    assert a == b
    assert a != c
    assert set(a) != set(c)


def test_does_not_use_or_disturb_global_random():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    first = generate_sentences("dog", 50, seed=1)
    assert random.random() == expected
    random.seed(999)
    assert generate_sentences("dog", 50, seed=1) == first


def test_prefix_of_larger_count_not_required_but_counts_are_exact():
    for n in (1, 2, 37, 1000):
        out = generate_sentences("dog", n, seed=3)
        assert len(out) == n == len(set(out))


def test_at_least_5000_distinct_sentences_reachable():
    assert available_sentence_count("cat") >= 5000
    sentences = generate_sentences("cat", 5000, seed=1)
    assert len(set(sentences)) == 5000
    assert all("cat" in s for s in sentences)


@pytest.mark.parametrize("subject", ["oil pastel", "cat wearing glasses", "watercolor painting", "pixel art",
                                     "red sports car"])
def test_phrases_and_styles_appear_verbatim(subject):
    sentences = generate_sentences(subject, 1000, seed=2)
    assert len(set(sentences)) == 1000
    assert all(subject in s for s in sentences), [s for s in sentences if subject not in s][:3]
    assert _articles_ok(sentences) == []


def test_style_subject_reads_as_a_style():
    assert subject_kind("oil pastel") == "style"
    assert subject_kind("cat wearing glasses") == "object"
    assert subject_kind("cat") == "object"
    sentences = generate_sentences("oil pastel", 200)
    # A style is the medium of a picture of something, never a thing photographed on a table.
    assert not any("photo of an oil pastel" in s for s in sentences)
    assert any(re.search(r"\boil pastel (?:painting|drawing|sketch|illustration|artwork|study) of\b", s)
               for s in sentences)
    assert all(" of " in s or "oil pastel." in s for s in sentences)
    # No doubled nouns for a subject that already names the picture.
    assert not any("painting painting" in s for s in generate_sentences("watercolor painting", 1000))
    # Mass noun: "pixel art of ...", never "a pixel art".
    assert not any(re.search(r"\ban? (?:\w+ )?pixel art\b", s, re.IGNORECASE)
                   for s in generate_sentences("pixel art", 1000))


def test_kind_override():
    forced = generate_sentences("Van Gogh", 100, kind="style")
    assert all("Van Gogh" in s for s in forced)
    assert any("Van Gogh painting of" in s for s in forced)
    as_object = generate_sentences("oil pastel", 300, kind="object")
    assert any("photo of an oil pastel" in s.lower() for s in as_object)
    with pytest.raises(ValueError, match="kind"):
        generate_sentences("cat", 10, kind="banana")


@pytest.mark.parametrize("subject,bad", [
    ("apple", "a apple"), ("oil pastel", "a oil"), ("orange", "a orange"), ("elephant", "a elephant"),
    ("cat", "an cat"), ("unicorn", "an unicorn"),
])
def test_article_agreement(subject, bad):
    sentences = generate_sentences(subject, 3000, seed=5)
    assert not any(re.search(rf"\b{bad}\b", s, re.IGNORECASE) for s in sentences)
    assert _articles_ok(sentences) == []


def test_article_for_subject_without_adjective():
    # Sentences where the subject directly follows the article.
    apple = [s for s in generate_sentences("apple", available_sentence_count("apple")) if " apple " in s]
    assert any(" an apple " in s for s in apple)
    assert not any(" a apple " in s for s in apple)
    assert indefinite_article("apple") == "an"
    assert indefinite_article("oil pastel") == "an"
    assert indefinite_article("cat") == "a"
    assert indefinite_article("unicorn") == "a"
    assert indefinite_article("hour") == "an"
    assert indefinite_article("Elephant") == "an"


def test_subject_with_determiner_is_kept_verbatim():
    sentences = generate_sentences("two cats", 1000)
    assert all("two cats" in s for s in sentences)
    assert not any(re.search(r"\ban? (?:\w+ )?two cats", s, re.IGNORECASE) for s in sentences)


def test_subject_is_stripped():
    assert generate_sentences("  cat  ", 20, seed=4) == generate_sentences("cat", 20, seed=4)


@pytest.mark.parametrize("subject", ["", "   ", "\n"])
def test_empty_subject_raises(subject):
    with pytest.raises(ValueError, match="subject"):
        generate_sentences(subject)


@pytest.mark.parametrize("count", [0, -1])
def test_count_below_one_raises(count):
    with pytest.raises(ValueError, match="at least 1"):
        generate_sentences("cat", count)


def test_count_too_large_names_available_count():
    available = available_sentence_count("cat")
    assert len(generate_sentences("cat", available, seed=0)) == available
    with pytest.raises(ValueError, match=rf"\b{available}\b") as info:
        generate_sentences("cat", available + 1)
    assert "available" in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# parse_sentences / files / labels / checks


def test_parse_sentences_rules():
    text = "  a photo of a cat  \n\n# a comment\n   # indented comment\nA cat on a mat.\na photo of a cat\n" \
           "a photo of a Cat\r\n\t\nlast line without newline"
    assert parse_sentences(text) == [
        "a photo of a cat",
        "A cat on a mat.",
        "a photo of a Cat",
        "last line without newline",
    ]
    assert parse_sentences("") == []
    assert parse_sentences("# only\n\n  \n") == []
    # '#' inside a sentence is kept.
    assert parse_sentences("cat #1 on a table") == ["cat #1 on a table"]


def test_read_sentence_file_round_trip(tmp_path):
    lines = ["a photo of a cat", "ein Foto einer Katze über dem Tisch", "# skipped", "", "un chat très mignon",
             "a photo of a cat"]
    path = tmp_path / "cat sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = ["a photo of a cat", "ein Foto einer Katze über dem Tisch", "un chat très mignon"]
    assert read_sentence_file(path) == expected
    assert read_sentence_file(str(path)) == expected


def test_read_sentence_file_generated_round_trip(tmp_path):
    sentences = generate_sentences("cat", 1000, seed=9)
    path = tmp_path / "cat.txt"
    path.write_text("\n".join(sentences), encoding="utf-8")
    assert read_sentence_file(path) == sentences


def test_read_sentence_file_missing_names_path(tmp_path):
    missing = tmp_path / "no such file.txt"
    with pytest.raises(FileNotFoundError, match=re.escape("no such file.txt")):
        read_sentence_file(missing)


@pytest.mark.parametrize("name,label", [
    ("tabby cat.txt", "tabby cat"),
    ("text.txt", "text"),
    ("cat.txt.txt", "cat.txt"),
    ("taxt.txt", "taxt"),  # str.strip(".txt") would give "a"
    ("dog", "dog"),
    ("notes.md", "notes.md"),
])
def test_sentence_file_label(name, label, tmp_path):
    assert sentence_file_label(name) == label
    assert sentence_file_label(tmp_path / name) == label
    assert sentence_file_label(f"some/dir/{name}") == label


def test_check_sentences():
    check_sentences(["a cat", "A CAT on a mat"], subject="cat")
    check_sentences(["anything"])
    with pytest.raises(ValueError, match="no sentences"):
        check_sentences([])
    with pytest.raises(ValueError, match="no sentences"):
        check_sentences([], subject="cat")
    with pytest.raises(ValueError, match=r"a dog on a mat") as info:
        check_sentences(["a cat", "a dog on a mat", "a bird"], subject="cat")
    assert "a bird" not in str(info.value)
    assert "cat" in str(info.value)
    check_sentences(generate_sentences("oil pastel", 100), subject="OIL PASTEL")
