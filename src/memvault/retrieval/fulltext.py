"""What the full-text indexes see, and queries that are always just words.

Both backends index ``chunks.search_text``: SQLite through FTS5 (``porter
unicode61``, bm25), PostgreSQL through a GIN index on its stored
``to_tsvector('english', …)`` (column ``search_tsv``). Neither tokenizer
segments Chinese or Japanese (a run of CJK characters would be one token),
so ``search_text`` spaces each CJK character apart and queries do the same,
matching a run of them as a phrase.

``search_text`` also starts with the collection's token, a word no text
contains: an FTS5 query ``token AND (terms)`` intersects one collection's
postings instead of ranking every user's matches and filtering afterwards.

Queries are reduced to their words here and re-quoted for the backend, so
punctuation and operators in what a user typed (``"AND (``, ``NEAR``, ``-x``,
``*``) are text, never query syntax.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["FTS_TOKENIZE", "TS_CONFIG", "collection_token", "search_text", "QueryTerms",
           "query_terms", "fts5_match"]

#: Kept in step with migration 0006.
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
TS_CONFIG = "english"
#: Terms beyond this are dropped from a query (a pasted page is not a query).
MAX_QUERY_TERMS = 64

_CJK = ("\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        "\uac00-\ud7af\uf900-\ufaff")
_CJK_CHAR = re.compile(f"([{_CJK}])")
# A query term: a run of CJK characters, or a word (letters, digits, underscore).
_TERM = re.compile(f"[{_CJK}]+|[^\\W{_CJK}]+")


def collection_token(owner_id: str, entity_id: str) -> str:
    """A word unique to one collection, which no text contains (letters only,
    so no tokenizer splits or stems it differently on either backend)."""
    digest = hashlib.sha256(f"{owner_id}\x00{entity_id}".encode()).digest()
    return "zzc" + "".join(chr(ord("a") + b % 26) for b in digest[:16])


def search_text(text: str, token: str) -> str:
    """``text`` as the indexes see it: the collection token, then the text with
    each CJK character a word of its own."""
    return token + " " + _CJK_CHAR.sub(r" \1 ", text)


@dataclass(frozen=True)
class QueryTerms:
    """The words of a query: single words, and CJK runs as phrases of characters."""

    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases)


def query_terms(query: str) -> QueryTerms:
    words: list[str] = []
    phrases: list[tuple[str, ...]] = []
    for match in _TERM.finditer(query.lower()):
        term = match.group()
        if _CJK_CHAR.match(term):
            phrases.append(tuple(term))
        elif term not in words:
            words.append(term)
        if len(words) + len(phrases) >= MAX_QUERY_TERMS:
            break
    return QueryTerms(tuple(words), tuple(phrases))


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def fts5_match(token: str, terms: QueryTerms) -> str:
    """An FTS5 MATCH expression: the collection token AND any of the terms.

    Every term is a quoted string, so FTS5 reads it as text; the tokenizer then
    applies the same folding and stemming it applied to the indexed text.
    """
    alternatives = [_quote(w) for w in terms.words]
    alternatives += [_quote(" ".join(p)) for p in terms.phrases]
    return f"{_quote(token)} AND ({' OR '.join(alternatives)})"
