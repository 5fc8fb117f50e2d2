"""Chunking: extracted text cut into overlapping, token-bounded chunks with offsets.

Owns how a document's text becomes chunks: paragraph- and sentence-aware, each
chunk at most ``max_tokens`` tokens (as counted by the embedder's tokenizer) and
sharing about ``overlap`` tokens with the one before. Every chunk's ``text`` is
exactly ``source[start:end]``. Storage and embedding are left to others.

How it cuts:

1. The text is split into *pieces*, the smallest units a chunk is made of:
   sentences (ended by ``.!?`` before white space, by ``。！？`` anywhere, or by a
   line break) inside paragraphs (separated by blank lines). A sentence longer
   than the budget becomes its words; a word longer than the budget (a URL, a
   base64 blob, Chinese text without punctuation) is cut where the tokenizer
   says the budget ends. Each piece is counted once; each remembers how strong
   the boundary before it is (paragraph > sentence > line > word > cut).
2. Pieces are packed greedily up to the budget; the chunk then ends at the
   strongest boundary that still leaves it at least half full (a paragraph end
   rather than mid-paragraph, a sentence end rather than mid-sentence).
3. The next chunk starts with the last whole pieces of the previous one that fit
   in ``overlap`` tokens (so overlap is approximate: whole sentences, never more
   than ``overlap`` tokens by the pieces' counts).

A tokenizer's count of a concatenation may differ from the sum of its parts, so
each chunk is counted once more as a whole and shortened if it is over budget.
The one exception to the budget is a single character that alone counts more
than ``max_tokens`` (it cannot be split further).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["TextChunk", "chunk_text", "count_words"]

# Boundary strength before a piece: where a chunk should preferably end.
_CUT, _WORD, _LINE, _SENTENCE, _PARAGRAPH = range(5)

_PARAGRAPHS = re.compile(r"\n[^\S\n]*\n\s*")
# A sentence ends after terminal punctuation (with closing quotes or brackets)
# followed by white space, after CJK terminal punctuation anywhere, or at a line
# break. Group ``stop`` is the punctuation when punctuation ended the sentence;
# the rest of the match is the white space between two sentences (it may be empty
# after CJK punctuation). Every match consumes something, so scanning is linear.
_SENTENCE_END = re.compile(
    r"(?P<stop>[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？；]+[\"'”’」』)）]*)\s*|\s*\n\s*"
)
_WORDS = re.compile(r"\S+")
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKENS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def count_words(text: str) -> int:
    """A tokenizer-free token count: words, CJK characters and punctuation marks
    each count one. Used when the embedder has no tokenizer of its own."""
    return len(_TOKENS.findall(text))


@dataclass(frozen=True, slots=True)
class TextChunk:
    """One chunk of a document's text.

    Attributes:
        position: 0, 1, … in document order.
        start: offset of the chunk's first character in the source text.
        end: offset just past its last character (``text == source[start:end]``).
        page: the page (from 1) on which the chunk starts, for paged sources.
        text: the chunk's text.
    """

    position: int
    start: int
    end: int
    page: int | None
    text: str


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    tokens: int
    boundary: int  # strength of the boundary before this piece


def chunk_text(text: str, *, max_tokens: int, overlap: int,
               count_tokens: Callable[[str], int] = count_words,
               pages: Sequence[tuple[int, int]] | None = None) -> list[TextChunk]:
    """Cut ``text`` into chunks of at most ``max_tokens`` tokens.

    Args:
        text: the extracted text.
        max_tokens: the budget per chunk (e.g. ``settings.chunk_tokens``).
        overlap: tokens shared by consecutive chunks, ``0 <= overlap < max_tokens``.
        count_tokens: the embedder's token count of a string (without special
            tokens such as ``[CLS]``: leave room for those in ``max_tokens``).
        pages: ``(start, end)`` offsets of each page in ``text`` (``Extracted.pages``);
            each chunk then records the page it starts on.

    Returns:
        The chunks in order; none for text that is empty or only white space.

    Raises:
        ValueError: ``max_tokens < 1`` or ``overlap`` outside ``[0, max_tokens)``.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap < max_tokens:
        raise ValueError("overlap must be at least 0 and smaller than max_tokens")
    pieces = _pieces(text, max_tokens, count_tokens)
    page_starts = [start for start, _ in pages] if pages else None
    chunks: list[TextChunk] = []
    for first, last in _pack(text, pieces, max_tokens, overlap, count_tokens):
        start, end = pieces[first].start, pieces[last].end
        page = None
        if page_starts is not None:
            page = max(1, bisect.bisect_right(page_starts, start))
        chunks.append(TextChunk(len(chunks), start, end, page, text[start:end]))
    return chunks


# ---------------------------------------------------------------- pieces

def _pieces(text: str, budget: int, count: Callable[[str], int]) -> list[_Piece]:
    pieces: list[_Piece] = []
    for p_start, p_end in _spans(_PARAGRAPHS, text, 0, len(text)):
        for number, (s_start, s_end, line_break) in enumerate(
                _sentences(text, p_start, p_end)):
            strength = _PARAGRAPH if number == 0 else _LINE if line_break else _SENTENCE
            tokens = count(text[s_start:s_end])
            if tokens <= budget:
                pieces.append(_Piece(s_start, s_end, tokens, strength))
            else:
                _words(text, s_start, s_end, budget, count, strength, pieces)
    return pieces


def _spans(separator: re.Pattern[str], text: str, start: int, end: int
           ) -> list[tuple[int, int]]:
    """Non-blank stretches of ``text[start:end]`` between matches of ``separator``,
    with surrounding white space trimmed."""
    spans = []
    at = start
    for match in separator.finditer(text, start, end):
        spans.append((at, match.start()))
        at = match.end()
    spans.append((at, end))
    return [trimmed for s, e in spans if (trimmed := _trim(text, s, e))[0] < trimmed[1]]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """Sentences of one paragraph as ``(start, end, ended_by_line_break)`` where
    the flag tells whether the boundary *before* the sentence was only a line break."""
    out: list[tuple[int, int, bool]] = []
    at = start
    line_break = False
    for match in _SENTENCE_END.finditer(text, start, end):
        stop = match.group("stop")
        s, e = _trim(text, at, match.end("stop") if stop else match.start())
        if s < e:
            out.append((s, e, line_break))
        # A line break without terminal punctuation is a weaker boundary.
        line_break = not stop
        at = match.end()
    s, e = _trim(text, at, end)
    if s < e:
        out.append((s, e, line_break))
    return out


def _words(text: str, start: int, end: int, budget: int, count: Callable[[str], int],
           strength: int, pieces: list[_Piece]) -> None:
    for match in _WORDS.finditer(text, start, end):
        w_start, w_end = match.span()
        tokens = count(text[w_start:w_end])
        if tokens <= budget:
            pieces.append(_Piece(w_start, w_end, tokens, strength))
        else:
            _hard_split(text, w_start, w_end, budget, count, strength, pieces)
        strength = _WORD


def _hard_split(text: str, start: int, end: int, budget: int, count: Callable[[str], int],
                strength: int, pieces: list[_Piece]) -> None:
    """Cut one over-long word into pieces of at most ``budget`` tokens each: the
    longest prefix within budget, found by galloping then bisecting, so that each
    cut costs O(log n) counts of a piece-sized string, never of the whole word."""
    at = start
    while at < end:
        # Gallop: grow the window until it is over budget or reaches the end.
        good, step = at + 1, max(1, budget)
        bad = None
        while True:
            probe = min(end, at + step)
            if count(text[at:probe]) <= budget:
                good = probe
                if probe == end:
                    break
                step *= 2
            else:
                bad = probe
                break
        if bad is not None:  # bisect between good (fits) and bad (does not)
            while bad - good > 1:
                mid = (good + bad) // 2
                if count(text[at:mid]) <= budget:
                    good = mid
                else:
                    bad = mid
        # ``good`` is at least one character: a lone character over budget is
        # the one thing that cannot be cut further.
        pieces.append(_Piece(at, good, count(text[at:good]), strength))
        strength = _CUT
        at = good


# ---------------------------------------------------------------- packing

def _pack(text: str, pieces: list[_Piece], budget: int, overlap: int,
          count: Callable[[str], int]) -> list[tuple[int, int]]:
    """``(first, last)`` piece indexes (inclusive) of each chunk."""
    out: list[tuple[int, int]] = []
    n = len(pieces)
    first = 0
    done = 0  # pieces before this index are in some chunk already
    while done < n:
        # Fill greedily by the pieces' own counts; at least one new piece.
        stop, total = first, 0
        while stop < n and (stop < done + 1 or total + pieces[stop].tokens <= budget):
            total += pieces[stop].tokens
            stop += 1
        if stop < n:
            stop = _best_cut(pieces, first, done, stop, budget)
        # Count the whole once: shorten from the end, else drop overlap pieces.
        while count(text[pieces[first].start:pieces[stop - 1].end]) > budget:
            if stop - 1 > max(first, done):
                stop -= 1
            elif first < done:
                first += 1
            else:
                break  # a single piece: within budget unless it is one character
        out.append((first, stop - 1))
        if stop >= n:
            break
        done = stop
        # Overlap: whole pieces from the end of this chunk, within ``overlap``
        # tokens, never the chunk's first piece (the next chunk must move on).
        shared, back = 0, stop
        while back - 1 > first and shared + pieces[back - 1].tokens <= overlap:
            back -= 1
            shared += pieces[back].tokens
        # Leave room for at least the next new piece.
        while back < stop and shared + pieces[stop].tokens > budget:
            shared -= pieces[back].tokens
            back += 1
        first = back
    return out


def _best_cut(pieces: list[_Piece], first: int, done: int, stop: int, budget: int) -> int:
    """Where to end a chunk holding ``pieces[first:stop]``: the strongest boundary
    that leaves it at least half full (the latest among equals); it must add at
    least one piece not in an earlier chunk."""
    best, best_strength = stop, -1
    total = 0
    for k in range(first, stop - 1):
        total += pieces[k].tokens
        cut = k + 1
        if cut <= done or 2 * total < budget:
            continue
        if pieces[cut].boundary >= best_strength:  # the latest of the strongest
            best, best_strength = cut, pieces[cut].boundary
    return best if best_strength > pieces[stop].boundary else stop
