from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenize import (
    REPLACEMENT,
    IncrementalDetokenizer,
    StopStringFilter,
    byte_piece_ids,
    special_ids,
)

TEXTS = [
    "Hello café naïve — 東京 🙂 the model runs.",
    "  leading spaces and   runs of spaces ",
    "€5 and £3 are Grüße, déjà vu; 🙂🙂 again",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def decoder(backend):
    return lambda ids: backend.decode(list(ids), skip_special_tokens=True)


def stream(backend, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(
        decoder(backend), byte_piece_ids(backend.get_vocab()), special_ids(backend)
    )
    deltas = [detokenizer.push(token) for token in ids]
    return [*deltas, detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_rebuild_multibyte_text_without_half_characters(backend, text: str) -> None:
    ids = backend.encode(text).ids
    deltas = stream(backend, ids)
    assert "".join(deltas) == backend.decode(ids, skip_special_tokens=True)
    assert not any(REPLACEMENT in delta for delta in deltas)


def test_emoji_and_cjk_are_spelled_with_byte_pieces(backend) -> None:
    # So the test above really sees characters split over several tokens.
    pieces = backend.encode("東京 🙂").tokens
    assert pieces.count("<0xF0>") == 1 and sum(p.startswith("<0x") for p in pieces) == 10


def test_the_first_word_loses_its_space_and_later_words_keep_theirs(backend) -> None:
    ids = backend.encode("the model runs").ids
    deltas = [d for d in stream(backend, ids) if d]
    assert deltas[0] == "the" and " model" in deltas and " runs" in deltas


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_token_sequence_streams_to_exactly_its_decoded_text(backend, data) -> None:
    vocab = backend.get_vocab_size()
    ids = data.draw(st.lists(st.integers(min_value=0, max_value=vocab - 1), max_size=40))
    assert "".join(stream(backend, ids)) == backend.decode(ids, skip_special_tokens=True)


def run_filter(pieces: list[str], stops: list[str]) -> tuple[str, list[str], bool]:
    stop_filter = StopStringFilter(stops)
    sent = [stop_filter.feed(piece) for piece in pieces]
    sent.append(stop_filter.finish())
    return stop_filter.text, sent, stop_filter.stopped


def test_a_stop_string_across_pieces_is_trimmed_and_never_sent() -> None:
    text, sent, stopped = run_filter(["Hello wor", "ld. ST", "OP here", " more"], ["STOP"])
    assert stopped and text == "Hello world. " and "".join(sent) == text
    assert not any("ST" in piece for piece in sent)


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    stop_filter = StopStringFilter(["STOP"])
    assert stop_filter.feed("a ST") == "a "  # "ST" might begin "STOP": held back
    assert stop_filter.feed("ART") == "START"
    assert not stop_filter.stopped


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abST OP🙂", max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    stops=st.lists(st.text(alphabet="abST OP🙂", min_size=1, max_size=4), max_size=3),
)
def test_streamed_stop_filtering_equals_trimming_the_whole_text(text, cuts, stops) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    expected, hit = trim_at_first_completed_stop(pieces, stops)
    result, sent, stopped = run_filter(pieces, stops)
    assert result == expected and "".join(sent) == expected and stopped == hit


def trim_at_first_completed_stop(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    # Generation ends with the piece that completes a stop string; the text is cut where the
    # earliest match in the text so far begins.
    text = ""
    for piece in pieces:
        text += piece
        hits = [i for i in (text.find(stop) for stop in stops) if i >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False
