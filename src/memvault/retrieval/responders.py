"""Responders: who writes the answer of ``/api/chat`` from retrieved passages.

This module owns the ``Responder`` protocol and its two implementations,
chosen by ``MEMVAULT_RESPONDER`` through :func:`make_responder`:

- ``extractive`` (the default): no model. It quotes the sentences of the best
  passages that share the most words with the question, each followed by its
  ``[n]`` marker, and says plainly when there is nothing to answer from.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint, streamed
  (Server-Sent Events), given a system prompt, the numbered passages and the
  recent conversation fitted within ``MEMVAULT_LLM_CONTEXT_TOKENS``.

A responder only produces text pieces; storing them (the durable reply, its
citations, ``failed`` on error) is ``chat.py``'s concern. A responder that
cannot go on raises ``ResponderFailed`` (502), whose message names the cause.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ..errors import MemvaultError
from ..models import Message, SearchHit

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Responder", "ResponderFailed", "Passage", "ExtractiveResponder", "OpenAIResponder",
    "make_responder", "estimate_tokens", "build_prompt", "chat_completions_url", "NOTHING_FOUND",
]

NOTHING_FOUND = "The documents contain nothing relevant to this question."
#: Words per streamed piece of an extractive answer.
PIECE_WORDS = 3
#: Passages an extractive answer quotes, sentences quoted per passage, and the
#: longest quote (characters) before it is cut at a word.
QUOTED_PASSAGES = 3
QUOTED_SENTENCES = 2
MAX_QUOTE_CHARS = 400

SYSTEM_PROMPT = (
    "You answer the user's questions using only the numbered passages from their "
    "documents given below. After each statement, cite the passages that support it "
    "by their numbers in square brackets, like [1] or [2][3]. If the passages do not "
    "contain the answer, say plainly that the documents contain nothing relevant; do "
    "not make an answer up. Answer in the language of the question.")


class ResponderFailed(MemvaultError):
    """The responder could not answer (its endpoint failed, stalled or answered
    nonsense). The reply is kept ``failed`` with the text written so far."""

    status, code, title = 502, "responder_failed", "Responder failed"


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved passage as the responder sees it: ``n`` is its citation number."""

    n: int
    chunk_id: str
    text: str
    doc_id: str | None = None
    filename: str | None = None
    position: int | None = None
    page: int | None = None

    @classmethod
    def of(cls, n: int, hit: SearchHit) -> Passage:
        return cls(n=n, chunk_id=hit.chunk_id, text=hit.text, doc_id=hit.doc_id,
                   filename=hit.filename, position=hit.position, page=hit.page)

    def citation(self) -> dict[str, Any]:
        """The reply's ``metadata.citations`` entry for this passage."""
        return {"n": self.n, "chunk_id": self.chunk_id, "doc_id": self.doc_id,
                "filename": self.filename, "position": self.position}

    def source(self) -> str:
        """Where the passage comes from, for people and prompts."""
        where = self.filename or "a stored record"
        return f"{where}, page {self.page}" if self.page is not None else where


class Responder(Protocol):
    """Writes an answer from numbered passages, as a stream of text pieces."""

    @property
    def name(self) -> str:
        """Stored as the reply's ``author``."""
        ...

    def respond(self, question: str, passages: Sequence[Passage],
                history: Sequence[Message]) -> Iterator[str]:
        """Yield the answer's text in pieces.

        Args:
            question: the user's message.
            passages: best first, numbered from 1; empty when nothing was found.
            history: the conversation's recent messages before ``question``, oldest first.

        Raises:
            ResponderFailed: (while iterating) the answer cannot be completed.
        """
        ...


# -- extractive ---------------------------------------------------------------

_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；])\s+|\n\s*")
_PIECE = re.compile(r"\s*\S+")
# Words too common to say whether a sentence answers a question (English, and
# the German and French of the seeds' data).
_STOPWORD_TEXT = """
a an and are as at be been but by can could did do does for from had has have how i if in
into is it its me my of on or our so than that the their them then there these they this
to was we were what when where which who whom why will with would you your about any all
also more most no not only other some such up out over just
der die das und ist im in den dem des ein eine einer zu von mit auf für nicht sich was wie
le la les et est un une des du de en dans pour que qui sur pas au aux ce ces il elle
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _terms(text: str) -> set[str]:
    """Content words of ``text``, lower-cased; each CJK character is a term of its own."""
    terms: set[str] = set()
    for word in _WORD.findall(text.lower()):
        cjk = _CJK.findall(word)
        if cjk:
            terms.update(cjk)
            word = _CJK.sub(" ", word)
            terms.update(w for w in word.split() if len(w) > 1 and w not in _STOPWORDS)
        elif len(word) > 1 and word not in _STOPWORDS:
            terms.add(word)
    return terms


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _shorten(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(",;:") + " …"


def _quote(passage: Passage, terms: set[str]) -> tuple[str, int]:
    """The passage's sentences that best match ``terms`` (in their order), and
    how many question terms they share."""
    sentences = _sentences(passage.text) or [passage.text]
    scored = [(len(terms & _terms(s)), i) for i, s in enumerate(sentences)]
    best = sorted(scored, key=lambda si: (-si[0], si[1]))[:QUOTED_SENTENCES]
    if best[0][0] == 0:  # nothing shared: the passage's opening says what it is about
        best = scored[:QUOTED_SENTENCES]
    chosen = sorted(i for _, i in best)
    quote = _shorten(" ".join(sentences[i] for i in chosen))
    return quote, len(terms & _terms(quote))


def pieces(text: str, words: int = PIECE_WORDS) -> Iterator[str]:
    """``text`` in pieces of a few words (leading whitespace kept), for streaming."""
    parts = _PIECE.findall(text)
    tail = text[len("".join(parts)):]
    for start in range(0, len(parts), words):
        yield "".join(parts[start:start + words])
    if tail:
        yield tail


class ExtractiveResponder:
    """Answers by quoting the passages: no model, no network, deterministic.

    The best ``QUOTED_PASSAGES`` passages are quoted (their sentences sharing
    the most words with the question, at most ``QUOTED_SENTENCES`` each), every
    quote followed by its ``[n]`` marker. It does not judge relevance beyond
    word overlap: when no quoted sentence shares a word with the question, the
    answer says so before quoting the nearest passages.
    """

    name = "extractive"

    def respond(self, question: str, passages: Sequence[Passage],
                history: Sequence[Message]) -> Iterator[str]:
        yield from pieces(self.answer(question, passages))

    def answer(self, question: str, passages: Sequence[Passage]) -> str:
        """The whole answer at once (``respond`` streams this)."""
        if not passages:
            return NOTHING_FOUND
        terms = _terms(question)
        lines, shared = [], 0
        for passage in passages[:QUOTED_PASSAGES]:
            quote, overlap = _quote(passage, terms)
            shared += overlap
            lines.append(f"- {passage.source()}: \u201c{quote}\u201d [{passage.n}]")
        intro = ("From the documents:" if shared else
                 "No passage of the documents shares a word with the question; "
                 "the nearest ones say:")
        return intro + "\n\n" + "\n".join(lines)


# -- OpenAI-compatible chat completions ----------------------------------------

def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four ASCII characters per token, and one
    token per other character (accented letters, CJK), which over-counts rather
    than under-counts for European languages."""
    ascii_chars = sum(1 for c in text if c < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _cut_to_tokens(text: str, tokens: int) -> str:
    """The longest start of ``text`` whose estimate fits ``tokens``."""
    budget = tokens * 4
    for i, c in enumerate(text):
        budget -= 1 if c < "\x80" else 4
        if budget < 0:
            return text[:i].rstrip() + " …"
    return text


#: Tokens each chat message costs besides its text (role and separators).
_MESSAGE_OVERHEAD = 4
#: A passage cut shorter than this is left out instead.
_MIN_PASSAGE_TOKENS = 32


def _format_passage(p: Passage, text: str | None = None) -> str:
    return f"[{p.n}] ({p.source()})\n{p.text if text is None else text}"


def build_prompt(question: str, passages: Sequence[Passage], history: Sequence[Message],
                 context_tokens: int) -> list[dict[str, str]]:
    """The chat messages for the model, within ``context_tokens`` (estimated).

    The system prompt and the question always go in (a question over half the
    budget is cut); then the passages, best first (the last one that does not
    fit whole is cut); then as many recent messages as still fit, newest first,
    kept in their order. Only user and assistant messages with text are sent.
    """
    def cost(text: str) -> int:
        return estimate_tokens(text) + _MESSAGE_OVERHEAD

    if cost(question) > context_tokens // 2:
        question = _cut_to_tokens(question, context_tokens // 2 - _MESSAGE_OVERHEAD)
    header = "\n\nPassages:\n\n" if passages else "\n\nNo passages were found."
    left = context_tokens - cost(SYSTEM_PROMPT + header) - cost(question)
    blocks: list[str] = []
    for p in passages:
        block = _format_passage(p)
        need = estimate_tokens(block) + 1
        if need > left:
            room = left - estimate_tokens(_format_passage(p, "")) - 2
            if room >= _MIN_PASSAGE_TOKENS:
                blocks.append(_format_passage(p, _cut_to_tokens(p.text, room)))
                left = 0
            break
        blocks.append(block)
        left -= need
    recent: list[dict[str, str]] = []
    for m in reversed(history):
        if m.role not in ("user", "assistant") or not m.content:
            continue
        need = cost(m.content)
        if need > left:
            break
        recent.append({"role": m.role, "content": m.content})
        left -= need
    recent.reverse()
    system = SYSTEM_PROMPT + header + "\n\n".join(blocks)
    return [{"role": "system", "content": system}, *recent,
            {"role": "user", "content": question}]


def chat_completions_url(base_url: str) -> str:
    """``…/chat/completions`` from a base such as ``https://api.openai.com/v1``
    or ``http://127.0.0.1:8080`` (an address ending in it is used as given)."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class OpenAIResponder:
    """An OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama,
    llama.cpp, LiteLLM …), streamed with ``stream: true``.

    Each answer is one request, not retried: once tokens have been shown a
    retry could not take them back. No token for ``timeout_s`` (keep-alive
    comments and empty deltas do not count), an error answer, an error event in
    the stream, or a stream that ends without ``[DONE]`` or a ``finish_reason``
    raises ``ResponderFailed`` naming the endpoint (never the key).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 context_tokens: int = 6000, timeout_s: float = 60.0) -> None:
        self.url = chat_completions_url(base_url)
        self.model = model
        self.context_tokens = context_tokens
        self.timeout_s = timeout_s
        self._api_key = api_key or ""
        parts = urlsplit(self.url)
        # For messages: no user:password@ and no query string (either may hold a secret).
        self._shown_url = f"{parts.scheme}://{parts.hostname}" + (
            f":{parts.port}" if parts.port else "") + parts.path

    def _failed(self, why: str) -> ResponderFailed:
        return ResponderFailed(f"the chat model at {self._shown_url} {why}")

    def respond(self, question: str, passages: Sequence[Passage],
                history: Sequence[Message]) -> Iterator[str]:
        import httpx

        body = {"model": self.model, "stream": True,
                "messages": build_prompt(question, passages, history, self.context_tokens)}
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        try:
            with httpx.Client(timeout=timeout) as client, \
                    client.stream("POST", self.url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    raise self._failed(f"answered {response.status_code}"
                                       f"{self._error_text(response)}")
                yield from self._tokens(response)
        except httpx.TimeoutException:
            raise self._failed(f"sent no token for {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise self._failed(f"could not be reached ({type(exc).__name__})") from None

    def _tokens(self, response: Any) -> Iterator[str]:
        last_token = time.monotonic()
        finished = False
        for line in response.iter_lines():
            if time.monotonic() - last_token > self.timeout_s:
                raise self._failed(f"sent no token for {self.timeout_s:g} s")
            if not line.startswith("data:"):
                continue  # comments (keep-alives), event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise self._failed("sent an event that is not JSON") from None
            if not isinstance(event, dict):
                raise self._failed("sent an event that is not a JSON object")
            if event.get("error"):
                raise self._failed(f"reported an error: {_error_message(event['error'])}")
            for choice in event.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    last_token = time.monotonic()
                    yield content
                if choice.get("finish_reason"):
                    finished = True
        if not finished:
            raise self._failed("ended its stream before [DONE]")

    @staticmethod
    def _error_text(response: Any) -> str:
        """``: <message>`` from an error answer's body, if it has one (bounded)."""
        try:
            raw = b""
            for part in response.iter_bytes():
                raw += part
                if len(raw) > 4096:
                    break
            payload = json.loads(raw[:4096])
        except Exception:  # noqa: BLE001 - the status alone still names the cause
            return ""
        message = _error_message(payload.get("error", payload)
                                 if isinstance(payload, dict) else payload)
        return f": {message}" if message else ""


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or ""
    return " ".join(str(error).split())[:300]


def make_responder(settings: Settings) -> Responder:
    """The responder ``MEMVAULT_RESPONDER`` names."""
    if settings.responder == "openai":
        assert settings.llm_base_url  # the settings refuse openai without it
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAIResponder(settings.llm_base_url, settings.llm_model, key,
                               context_tokens=settings.llm_context_tokens,
                               timeout_s=settings.llm_timeout_s)
    return ExtractiveResponder()
