"""Helpers shared by the streaming end-to-end tests: deterministic unicode deltas,
an SSE reader, and small HTTP helpers for streamed messages."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Pieces deltas are made of: multi-byte and astral characters, combining marks,
#: ZWJ sequences, right-to-left text, line and paragraph separators, BOM, JSON and
#: SSE-significant characters. (NUL and lone surrogates are not text.)
PIECES = [
    "a", "the ", "quick", " ", "brown fox", ".", ",", "\n", "\r\n", "\r", "\t",
    "wörld", "ñ", "ç", "Ærø", "ß", "日本語", "中文", "한국어", "ไทย", "Ελληνικά",
    "Кириллица", "שלום", "مرحبا", "\u200f", "\u200e", "e\u0301", "a\u0308\u0323",
    "🙂", "👩\u200d👩\u200d👧", "🇫🇷", "👍🏽", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010fffd", "\U0001f600",
    "\u200d", "\ufeff", "\u2028", "\u2029", "\u00a0", "\ufffd", "\uffff",
    "\\", '"', "'", "<b>&amp;</b>", "{}", "[]", "data: x", "id: 7", "event: done",
    ": comment", "%s", "${x}", "\x7f", "\x1b[0m", "\u0085",
]


def unicode_deltas(seed: int | str) -> Iterator[str]:
    """An endless, reproducible stream of deltas (one to three pieces, sometimes none)."""
    rng = random.Random(seed)
    while True:
        roll = rng.random()
        if roll < 0.01:
            yield ""
        else:
            yield "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 3)))


def take(gen: Iterator[str], n: int) -> list[str]:
    return [next(gen) for _ in range(n)]


@dataclass
class SSEEvent:
    event: str = "message"
    id: str | None = None
    data: Any = None
    raw: list[str] = field(default_factory=list)


def sse_events(response: httpx.Response) -> Iterator[SSEEvent]:
    """Parse a text/event-stream response line by line (comments and ``retry`` skipped)."""
    current = SSEEvent()
    data_lines: list[str] = []
    seen_field = False
    for line in response.iter_lines():
        if line == "":
            if seen_field and (data_lines or current.event != "message"):
                current.data = json.loads("\n".join(data_lines)) if data_lines else None
                yield current
            current, data_lines, seen_field = SSEEvent(), [], False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current.raw.append(line)
        if name == "event":
            current.event, seen_field = value, True
        elif name == "data":
            data_lines.append(value)
            seen_field = True
        elif name == "id":
            current.id, seen_field = value, True
        # "retry" and unknown fields are ignored


def create_conversation(client: httpx.Client, headers: dict[str, str], title: str) -> str:
    r = client.post("/api/conversations", json={"title": title}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def start_stream(client: httpx.Client, headers: dict[str, str], conv_id: str,
                 author: str = "bot") -> str:
    r = client.post(f"/api/conversations/{conv_id}/messages",
                    json={"role": "assistant", "status": "streaming", "author": author},
                    headers=headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "streaming" and body["content"] == "", body
    return str(body["id"])


def read_all_chunks(client: httpx.Client, headers: dict[str, str], message_id: str,
                    after: int | None = None, timeout: float = 60
                    ) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """Follow the SSE stream to its ``done`` event: ([(seq, text)...], done data)."""
    h = dict(headers)
    if after is not None:
        h["Last-Event-ID"] = str(after)
    chunks: list[tuple[int, str]] = []
    with client.stream("GET", f"/api/messages/{message_id}/stream", headers=h,
                       timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for ev in sse_events(r):
            if ev.event == "chunk":
                assert ev.id == str(ev.data["seq"]), ev
                chunks.append((ev.data["seq"], ev.data["text"]))
            elif ev.event == "done":
                return chunks, ev.data
    raise AssertionError(f"stream of {message_id} ended without a done event")


def assert_gapless(chunks: list[tuple[int, str]], start: int = 1) -> None:
    seqs = [s for s, _ in chunks]
    assert seqs == list(range(start, start + len(seqs))), f"gap or duplicate in {seqs[:50]}..."
