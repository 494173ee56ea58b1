"""Unit tests of translation's pure helpers: splitting, language tags, legacy names."""

import time

import pytest

from translation.services import InvalidLanguage, language_validate, legacy_arguments, text_split
from usage.services import tokens_count_text


def numbered_paragraphs(count: int, words: int = 12) -> list[str]:
    return [f"Paragraph {n}: " + " ".join(f"w{n}x{i}" for i in range(words)) + "." for n in range(count)]


def assert_within(pieces: list[str], budget: int) -> None:
    over = [(tokens_count_text(piece), piece[:40]) for piece in pieces if tokens_count_text(piece) > budget]
    assert not over


def test_it_keeps_a_short_text_whole():
    assert text_split("One.\n\nTwo.", max_tokens=100) == ["One.\n\nTwo."]


def test_it_splits_at_paragraph_boundaries_in_order_within_the_budget():
    paragraphs = numbered_paragraphs(40)

    pieces = text_split("\n\n".join(paragraphs), max_tokens=120)

    assert len(pieces) > 3
    assert_within(pieces, 120)
    # Every paragraph is whole in exactly one piece, and the pieces rejoin to the text.
    assert [paragraph for piece in pieces for paragraph in piece.split("\n\n")] == paragraphs


def test_it_fills_pieces_rather_than_sending_one_paragraph_each():
    paragraphs = numbered_paragraphs(40)
    budget = 120

    pieces = text_split("\n\n".join(paragraphs), max_tokens=budget)

    per_paragraph = tokens_count_text(paragraphs[0])
    assert len(pieces) <= len(paragraphs) // (budget // (per_paragraph + 1) - 1)


def test_it_treats_blank_lines_with_spaces_as_paragraph_breaks():
    assert text_split("One.\n  \nTwo.", max_tokens=3) == ["One.", "Two."]


def test_it_splits_an_over_long_paragraph_at_sentence_ends():
    sentences = [f"Sentence {n} says something quite ordinary about the weather." for n in range(30)]
    paragraph = " ".join(sentences)

    pieces = text_split(f"Intro.\n\n{paragraph}\n\nOutro.", max_tokens=40)

    assert_within(pieces, 40)
    assert pieces[0].startswith("Intro.") and pieces[-1].endswith("Outro.")
    body = " ".join(pieces).replace("\n\n", " ").removeprefix("Intro. ").removesuffix(" Outro.")
    assert body == paragraph  # order kept, nothing lost
    assert all(piece.rstrip().endswith(".") for piece in pieces)  # cut only at sentence ends


def test_it_splits_an_over_long_sentence_at_whitespace():
    sentence = " ".join(f"word{n}" for n in range(400))

    pieces = text_split(sentence, max_tokens=50)

    assert len(pieces) > 4
    assert_within(pieces, 50)
    assert " ".join(pieces).split() == sentence.split()


def test_it_splits_a_word_longer_than_the_budget():
    blob = "x7Q" * 400

    pieces = text_split(f"Before.\n\n{blob}\n\nAfter.", max_tokens=30)

    assert_within(pieces, 30)
    assert "".join(pieces).replace("\n\n", "").replace(" ", "") == f"Before.{blob}After."


def test_it_splits_a_long_text_without_punctuation_in_linear_time():
    text = " ".join(f"word{n}" for n in range(20_000))  # the quadratic version took minutes

    started = time.monotonic()
    pieces = text_split(text, max_tokens=2000)

    assert time.monotonic() - started < 3
    assert_within(pieces, 2000)


@pytest.mark.parametrize("tag, normalised", [("fr", "fr"), ("pt-br", "pt-BR"), ("en_US", "en-US"),
                                             ("zh-Hant-TW", "zh-Hant-TW")])
def test_it_normalises_valid_tags(tag, normalised):
    assert language_validate(tag, field="target_language") == normalised


@pytest.mark.parametrize("tag", ["xx-!!", "english", "", "xx", None, 12])
def test_it_refuses_invalid_tags_naming_the_field(tag):
    with pytest.raises(InvalidLanguage) as error:
        language_validate(tag, field="source_language")

    assert error.value.status == 400
    assert list(error.value.extra["fields"]) == ["source_language"]


def test_it_maps_legacy_names():
    assert legacy_arguments({"text": "t", "target_lang": "fr", "src_lang": "en", "provider": "local"}) == {
        "text": "t", "target_language": "fr", "source_language": "en", "provider": "local"}
    assert legacy_arguments({"language": "de"}) == {"target_language": "de"}
