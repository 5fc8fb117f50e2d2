"""Chunking: exact offsets, full coverage, the token budget, overlap, and boundaries.

Pure functions, no database: these run once, not per backend.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memvault.retrieval.chunking import TextChunk, chunk_text, count_words


def check_invariants(text: str, chunks: list[TextChunk], max_tokens: int,
                     count: Callable[[str], int]) -> None:
    assert [c.position for c in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text == text[chunk.start:chunk.end]
        assert chunk.text.strip() and chunk.text == chunk.text.strip()
        # The budget holds, except for one character that alone is over it.
        assert count(chunk.text) <= max_tokens or len(chunk.text) == 1
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    for i, char in enumerate(text):
        assert covered[i] or char.isspace(), f"character {i} ({char!r}) is in no chunk"
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start > before.start and after.end > before.end


def test_blank_text_gives_no_chunks() -> None:
    for text in ("", " ", "\n\n\t \u3000\n"):
        assert chunk_text(text, max_tokens=10, overlap=2) == []


def test_short_text_is_one_chunk_without_its_outer_white_space() -> None:
    text = "\n\n  Ein kurzer Satz. Noch einer!  \n"
    [chunk] = chunk_text(text, max_tokens=50, overlap=5)
    assert chunk == TextChunk(0, 4, 32, None, "Ein kurzer Satz. Noch einer!")


def test_chunks_end_at_paragraph_boundaries_when_they_can() -> None:
    paragraph = "This sentence has exactly seven words. " * 3  # 24 tokens with the dots
    paragraphs = [f"P{i} " + paragraph.strip() for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, max_tokens=60, overlap=0)
    check_invariants(text, chunks, 60, count_words)
    for chunk in chunks:
        assert text[chunk.end:chunk.end + 2] in ("\n\n", "")  # ends a paragraph
        assert chunk.start == 0 or text[chunk.start - 2:chunk.start] == "\n\n"
    assert [c.text.count("\n\n") for c in chunks] == [1, 1, 1]


def test_chunks_end_at_sentence_ends_inside_a_long_paragraph() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_text(text, max_tokens=30, overlap=6)
    check_invariants(text, chunks, 30, count_words)
    for chunk in chunks:
        assert chunk.text.startswith("Sentence") and chunk.text.endswith(".")


def test_overlap_repeats_whole_sentences_within_the_overlap() -> None:
    text = " ".join(f"Satz {i} ist da." for i in range(30))  # five tokens each
    chunks = chunk_text(text, max_tokens=20, overlap=10)
    check_invariants(text, chunks, 20, count_words)
    for before, after in zip(chunks, chunks[1:], strict=False):
        shared = text[after.start:before.end]
        assert after.start < before.end and count_words(shared) == 10
        assert shared.startswith("Satz") and shared.endswith(".")


def test_cjk_sentences_split_without_spaces() -> None:
    text = "记忆库保存文档。搜索很快！你好吗？" * 10
    chunks = chunk_text(text, max_tokens=12, overlap=0)
    check_invariants(text, chunks, 12, count_words)
    assert all(c.text[-1] in "。！？" for c in chunks)
    assert count_words("记忆库。") == 4


def test_over_long_sentences_and_words_are_split() -> None:
    words = " ".join(f"w{i}" for i in range(100))  # one sentence of 100 tokens
    chunks = chunk_text(words, max_tokens=16, overlap=4)
    check_invariants(words, chunks, 16, count_words)
    blob = "汉" * 500  # no punctuation, no spaces: cut by the token count
    chunks = chunk_text(blob, max_tokens=64, overlap=0)
    check_invariants(blob, chunks, 64, count_words)
    assert [len(c.text) for c in chunks] == [64] * 7 + [52]
    url = "https://example.com/" + "a/b." * 300
    chunks = chunk_text(url, max_tokens=50, overlap=10, count_tokens=len)
    check_invariants(url, chunks, 50, len)


def test_pages_name_the_page_each_chunk_starts_on() -> None:
    page_one, page_two = "Erste Seite. " * 10, "Deuxième page. " * 10
    text = page_one.strip() + "\n\n" + page_two.strip()
    pages = [(0, len(page_one.strip())), (len(page_one.strip()) + 2, len(text))]
    chunks = chunk_text(text, max_tokens=12, overlap=0, pages=pages)
    assert {c.page for c in chunks} == {1, 2}
    for chunk in chunks:
        assert chunk.page == (1 if chunk.start < pages[1][0] else 2)


def test_a_non_additive_tokenizer_still_keeps_the_budget() -> None:
    # Counting characters, spaces included: the sum of the pieces' counts is less
    # than the count of the whole, so each chunk is counted again as a whole.
    text = "Alpha beta. Gamma delta epsilon. Zeta.\nEta theta iota kappa. " * 20
    chunks = chunk_text(text, max_tokens=40, overlap=10, count_tokens=len)
    check_invariants(text, chunks, 40, len)


def test_a_character_over_budget_is_its_own_chunk() -> None:
    # A tokenizer that adds two special tokens to every count: with a budget of
    # two, no character fits, and each becomes a chunk of its own.
    def with_specials(s: str) -> int:
        return count_words(s) + 2

    chunks = chunk_text("ab cd", max_tokens=2, overlap=0, count_tokens=with_specials)
    assert [c.text for c in chunks] == ["a", "b", "c", "d"]


def test_counting_is_proportional_to_the_text() -> None:
    counted = 0

    def counting(s: str) -> int:
        nonlocal counted
        counted += len(s)
        return count_words(s)

    paragraph = " ".join(f"Sentence {i} holds a few words, like this one." for i in range(30))
    text = "\n\n".join([paragraph] * 100) + "\n\n" + "x" * 50_000
    chunks = chunk_text(text, max_tokens=256, overlap=32, count_tokens=counting)
    check_invariants(text, chunks, 256, count_words)
    # Each piece is counted once and each chunk once more as a whole (plus the
    # overlap): a small multiple of the text, never quadratic.
    assert counted < 4 * len(text)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (10, 10), (10, -1), (5, 7)])
def test_bad_arguments(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", max_tokens=max_tokens, overlap=overlap)


# ---------------------------------------------------------------- properties

_ATOMS = st.sampled_from([
    "word", "Wörter", "été", "über", "a", "longerwordwithoutbreaks", "123", "记忆库", "搜索",
    ".", "!", "?", "。", "！", "？", ",", "\"", "”", ")", " ", " ", " ", "  ", "\n", "\n\n",
    "\n \n", "\t", "e.g.", "https://example.com/x?y=z", "汉" * 30, "x" * 40, "😀",
])
_TEXTS = st.lists(_ATOMS, max_size=120).map("".join) | st.text(max_size=300)
_COUNTERS: list[Callable[[str], int]] = [count_words, len, lambda s: len(s.split())]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS, max_tokens=st.integers(1, 40), data=st.data(),
       counter=st.sampled_from(_COUNTERS))
def test_chunking_properties(text: str, max_tokens: int, data: st.DataObject,
                             counter: Callable[[str], int]) -> None:
    overlap = data.draw(st.integers(0, max_tokens - 1))
    chunks = chunk_text(text, max_tokens=max_tokens, overlap=overlap, count_tokens=counter)
    check_invariants(text, chunks, max_tokens, counter)
    assert bool(chunks) == bool(text.strip())
    if counter is count_words:
        # Overlap: what consecutive chunks share stays within ``overlap`` tokens.
        for before, after in zip(chunks, chunks[1:], strict=False):
            if after.start < before.end:
                assert count_words(text[after.start:before.end]) <= overlap


@settings(max_examples=100, deadline=None)
@given(text=_TEXTS, data=st.data())
def test_pages_property(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *cuts, len(text)]
    pages = list(zip(bounds, bounds[1:], strict=False))
    chunks = chunk_text(text, max_tokens=8, overlap=2, pages=pages)
    for chunk in chunks:
        expected = max(i for i, (start, _) in enumerate(pages, 1) if start <= chunk.start)
        assert chunk.page == expected


def test_chunk_settings_are_validated() -> None:
    from memvault.errors import ConfigError
    from memvault.settings import load_settings

    settings = load_settings(chunk_tokens=100, chunk_overlap=10)
    assert (settings.chunk_tokens, settings.chunk_overlap) == (100, 10)
    with pytest.raises(ConfigError, match="MEMVAULT_CHUNK_OVERLAP .* MEMVAULT_CHUNK_TOKENS"):
        load_settings(chunk_tokens=32, chunk_overlap=32)
    with pytest.raises(ConfigError, match="MEMVAULT_CHUNK_OVERLAP"):
        load_settings(chunk_overlap=-1)
    with pytest.raises(ConfigError, match="MEMVAULT_CHUNK_TOKENS"):
        load_settings(chunk_tokens=0)
