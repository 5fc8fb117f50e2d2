"""``POST /api/chat`` over HTTP: JSON and Server-Sent Events, citations that point
at real chunks, the user message stored first, 502 when the responder fails,
isolation. Hash embedder (fast); the ``openai`` responder talks to the suite's
own fake server. (A client that disconnects mid-reply: tests/e2e/test_chat.py.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

import memvault
from memvault import Settings
from memvault.retrieval.responders import NOTHING_FOUND
from memvault.service import create_app
from memvault.settings import revalidate

from ..fake_llm import DEFAULT_TOKENS, FakeLLM
from .conftest import register
from .test_conversations_api import _sse
from .test_search_api import upload

MANUAL = ("manual.md", b"# Pump\n\nThe pump needs new seals every six months. Replace the "
          b"filter when the pressure drops below two bar.\n", "text/markdown")
NOTES = ("notes.txt", b"Our office plants need water on Mondays.\n", "text/plain")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return revalidate(settings, embedder="hash")


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@contextmanager
def openai_client(settings: Settings, fake: FakeLLM, **more: Any) -> Iterator[TestClient]:
    """A service whose responder is the fake server."""
    with memvault.open(revalidate(settings, responder="openai", llm_base_url=fake.url,
                                  **more)) as vault, \
            TestClient(create_app(vault=vault)) as client:
        yield client


def session(client: TestClient, auth: dict[str, str], with_documents: bool = True) -> str:
    r = client.post("/api/entities", headers=auth, json={"entity_name": "Pumps"})
    assert r.status_code == 201, r.text
    entity_id = r.json()["entity_id"]
    if with_documents:
        docs = upload(client, auth, entity_id, MANUAL, NOTES)
        assert [d["status"] for d in docs] == ["indexed", "indexed"]
    r = client.post("/api/chat/sessions", headers=auth, json={"entity_id": entity_id})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def messages(client: TestClient, auth: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/chat/sessions/{sid}/messages", headers=auth)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_chat_answers_with_citations_of_real_chunks(client: TestClient,
                                                    auth: dict[str, str]) -> None:
    sid = session(client, auth)
    r = client.post("/api/chat", headers=auth,
                    json={"session_id": sid, "message": "How often do the seals need replacing?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"session_id", "user_message", "message"} and body["session_id"] == sid
    user, reply = body["user_message"], body["message"]
    assert (user["role"], user["content"]) == ("user", "How often do the seals need replacing?")
    assert (reply["role"], reply["author"], reply["status"]) == ("assistant", "extractive",
                                                                 "complete")
    assert "six months" in reply["content"]
    assert [m["id"] for m in messages(client, auth, sid)] == [user["id"], reply["id"]]

    entity_id = client.get(f"/api/chat/sessions/{sid}", headers=auth).json()["entity_id"]
    citations = reply["metadata"]["citations"]
    assert [c["n"] for c in citations] == [1, 2] and citations[0]["filename"] == "manual.md"
    for c in citations:
        r = client.get(f"/api/entities/{entity_id}/chunks/{c['chunk_id']}", headers=auth)
        assert r.status_code == 200, r.text
        assert (r.json()["doc_id"], r.json()["position"]) == (c["doc_id"], c["position"])
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", reply["content"])}
    assert markers and markers <= {c["n"] for c in citations}


def test_conversation_id_k_mode_and_bad_bodies(client: TestClient,
                                               auth: dict[str, str]) -> None:
    sid = session(client, auth)
    r = client.post("/api/chat", headers=auth, json={
        "conversation_id": sid, "message": "office plants water", "k": 1, "mode": "text"})
    assert r.status_code == 200, r.text
    citations = r.json()["message"]["metadata"]["citations"]
    assert [c["filename"] for c in citations] == ["notes.txt"]
    for bad in ({"message": "hi"}, {"session_id": sid}, {"session_id": sid, "message": ""},
                {"session_id": sid, "conversation_id": "other", "message": "hi"},
                {"session_id": sid, "message": "hi", "k": 0},
                {"session_id": sid, "message": "hi", "k": 101},
                {"session_id": sid, "message": "hi", "mode": "fuzzy"},
                {"session_id": sid, "message": "hi", "stream": "yes"}):
        r = client.post("/api/chat", headers=auth, json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert len(messages(client, auth, sid)) == 2  # nothing stored by a refused request


def test_a_session_without_documents_says_so(client: TestClient, auth: dict[str, str]) -> None:
    for sid in (session(client, auth, with_documents=False),
                client.post("/api/conversations", headers=auth, json={}).json()["id"]):
        r = client.post("/api/chat", headers=auth, json={"session_id": sid, "message": "why?"})
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] == NOTHING_FOUND
        assert r.json()["message"]["metadata"] == {"citations": []}


def test_streamed_reply_equals_the_stored_reply(client: TestClient,
                                                auth: dict[str, str]) -> None:
    sid = session(client, auth)
    r = client.post("/api/chat", headers=auth, json={
        "session_id": sid, "message": "What about the filter pressure?", "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert r.text.index("event: message") < r.text.index("event: chunk")
    first_id, kind, head = events[0]
    assert kind == "message" and first_id is None
    assert set(head) == {"session_id", "user_message_id", "message_id"}
    assert head["session_id"] == sid
    chunks = [e for e in events if e[1] == "chunk"]
    assert chunks and [int(str(i)) for i, _, _ in chunks] == [d["seq"] for _, _, d in chunks]
    assert events[-1][1] == "done" and events[-1][2]["status"] == "complete"
    streamed = "".join(d["text"] for _, _, d in chunks)

    stored = client.get(f"/api/messages/{head['message_id']}", headers=auth).json()
    assert (stored["status"], stored["author"]) == ("complete", "extractive")
    assert stored["content"] == streamed and "two bar" in streamed
    user, reply = messages(client, auth, sid)
    assert (user["id"], reply["id"]) == (head["user_message_id"], head["message_id"])
    # The reply's own stream gives the same chunks, from the start or resumed.
    again = _sse(client.get(f"/api/messages/{head['message_id']}/stream", headers=auth).text)
    assert [e for e in again if e[1] == "chunk"] == chunks
    resumed = _sse(client.get(f"/api/messages/{head['message_id']}/stream", headers={
        **auth, "Last-Event-ID": str(chunks[0][2]["seq"])}).text)
    assert [e for e in resumed if e[1] == "chunk"] == chunks[1:]


def test_another_owners_session_is_404(client: TestClient, auth: dict[str, str]) -> None:
    sid = session(client, auth, with_documents=False)
    other = register(client, "other@example.com")
    for stream in (False, True):
        r = client.post("/api/chat", headers=other,
                        json={"session_id": sid, "message": "hi", "stream": stream})
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/problem+json"
    r = client.post("/api/chat", headers=auth, json={"session_id": "nope", "message": "hi"})
    assert r.status_code == 404
    assert messages(client, auth, sid) == []
    assert client.post("/api/chat", json={"session_id": sid, "message": "hi"}).status_code == 401


def test_responder_failure_is_502_with_the_user_message_kept(
        settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.behaviour = "fail"
    with openai_client(settings, fake_llm) as client:
        auth = register(client, "owner@example.com")
        sid = session(client, auth)
        r = client.post("/api/chat", headers=auth, json={"session_id": sid, "message": "seals?"})
        assert r.status_code == 502, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == "responder_failed"
        assert fake_llm.url.removesuffix("/v1") in problem["detail"]
        assert "500" in problem["detail"] and "the model is on fire" in problem["detail"]
        user, reply = messages(client, auth, sid)
        assert (user["content"], reply["status"], reply["author"]) == ("seals?", "failed",
                                                                       "openai")
        # streamed, the same failure ends with done: failed
        r = client.post("/api/chat", headers=auth,
                        json={"session_id": sid, "message": "seals?", "stream": True})
        assert r.status_code == 200
        assert _sse(r.text)[-1][1:] == ("done", {"status": "failed", "last_seq": 0})
        assert [m["status"] for m in messages(client, auth, sid)] == [
            "complete", "failed", "complete", "failed"]


def test_openai_stream_stalls_then_fails_keeping_its_text(settings: Settings,
                                                          fake_llm: FakeLLM) -> None:
    fake_llm.behaviour = "stall"
    with openai_client(settings, fake_llm, llm_timeout_s=0.5) as client:
        auth = register(client, "owner@example.com")
        sid = session(client, auth)
        r = client.post("/api/chat", headers=auth,
                        json={"session_id": sid, "message": "seals?", "stream": True})
        events = _sse(r.text)
        assert events[-1][1] == "done" and events[-1][2]["status"] == "failed"
        streamed = "".join(d["text"] for _, kind, d in events if kind == "chunk")
        assert streamed == "".join(DEFAULT_TOKENS[:2])
        stored = client.get(f"/api/messages/{events[0][2]['message_id']}", headers=auth).json()
        assert (stored["status"], stored["content"]) == ("failed", streamed)
        assert "[1] (manual.md)" in fake_llm.requests[0]["messages"][0]["content"]


def test_openai_reply_streams_whole(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.tokens = [f"word{i} " for i in range(200)]
    with openai_client(settings, fake_llm) as client:
        auth = register(client, "owner@example.com")
        sid = session(client, auth, with_documents=False)
        r = client.post("/api/chat", headers=auth,
                        json={"session_id": sid, "message": "count", "stream": True})
        events = _sse(r.text)
        streamed = "".join(d["text"] for _, kind, d in events if kind == "chunk")
        assert streamed == "".join(fake_llm.tokens)
        assert events[-1][2]["status"] == "complete"
        r = client.post("/api/chat", headers=auth, json={"session_id": sid, "message": "again"})
        assert r.json()["message"]["content"] == streamed
        # the second request carried the first exchange as history
        assert fake_llm.requests[1]["messages"][1:] == [
            {"role": "user", "content": "count"}, {"role": "assistant", "content": streamed},
            {"role": "user", "content": "again"}]
