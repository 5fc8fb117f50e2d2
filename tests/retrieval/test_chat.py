"""Chat over an entity's documents, from the library: the turn's order (user
message first), citations that point at real chunks, the extractive responder,
and the ``openai`` responder against the suite's own fake server (streaming,
stalling, failing). Both backends, with the hash embedder (fast; it matches
shared words, which is all these tests need).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from memvault import Settings, Vault
from memvault.errors import Invalid, NotFound
from memvault.models import Message
from memvault.retrieval.chat import chat, start_chat
from memvault.retrieval.responders import (
    NOTHING_FOUND,
    ExtractiveResponder,
    OpenAIResponder,
    Passage,
    ResponderFailed,
    build_prompt,
    chat_completions_url,
    estimate_tokens,
    make_responder,
)
from memvault.scope import Scope
from memvault.settings import revalidate

from ..fake_llm import DEFAULT_TOKENS, FakeLLM

BATTERY = (b"# Battery\n\nThe battery lasts about twelve hours of continuous use. It charges "
           b"fully in ninety minutes with the supplied adapter.\n\nStorage: keep the battery "
           b"half charged when the device is stored for months.\n")
WARRANTY = (b"Warranty terms. The warranty covers manufacturing defects for two years. "
            b"Water damage is not covered by the warranty.\n")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return revalidate(settings, embedder="hash")


@pytest.fixture
def scope(vault: Vault, user_id: str) -> Scope:
    return vault.for_user(user_id)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def documents_session(scope: Scope) -> str:
    """A session on an entity holding two indexed documents; returns its id."""
    entity = scope.entities.create(entity_name="Device manual")
    docs = [scope.files.add(entity.entity_id, "battery.md", BATTERY),
            scope.files.add(entity.entity_id, "warranty.txt", WARRANTY)]
    done = scope.files.wait_indexed(entity.entity_id, [d.doc_id for d in docs], 60)
    assert [d.status for d in done] == ["indexed", "indexed"], done
    return scope.conversations.create(title="manual", entity_id=entity.entity_id).id


def history(scope: Scope, session_id: str) -> list[Message]:
    return scope.conversations.messages(session_id, 100).items


def openai(fake: FakeLLM, **kwargs: float) -> OpenAIResponder:
    return OpenAIResponder(fake.url, "fake-model", "sk-test", **kwargs)  # type: ignore[arg-type]


# -- the extractive responder ---------------------------------------------------

def test_extractive_reply_quotes_and_cites_real_chunks(scope: Scope) -> None:
    session = documents_session(scope)
    turn = chat(scope, session, "How long does the battery last?")
    user, reply = history(scope, session)
    assert (user.role, user.content, user.id) == ("user", "How long does the battery last?",
                                                  turn.user_message.id)
    assert reply.id == turn.message_id and reply.seq == user.seq + 1
    assert (reply.role, reply.author, reply.status) == ("assistant", "extractive", "complete")
    assert turn.message is not None and turn.message.content == reply.content

    citations = reply.metadata["citations"]
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    entity_id = scope.conversations.get(session).entity_id
    assert entity_id is not None
    texts = {}
    for c in citations:  # each names a stored chunk of the document it says
        chunk = scope.collections.get(entity_id, c["chunk_id"])
        assert (chunk.doc_id, chunk.position) == (c["doc_id"], c["position"])
        assert scope.files.get(entity_id, c["doc_id"]).filename == c["filename"]
        texts[c["n"]] = chunk.text
    assert citations[0]["filename"] == "battery.md"

    markers = [int(n) for n in re.findall(r"\[(\d+)\]", reply.content)]
    assert markers and set(markers) <= set(texts)
    assert "twelve hours" in reply.content
    for quote, n in re.findall(r"\u201c(.*?)\u201d \[(\d+)\]", reply.content):
        assert quote.removesuffix(" …") in " ".join(texts[int(n)].split())


def test_nothing_relevant_without_entity_or_documents(scope: Scope) -> None:
    bare = scope.conversations.create(title="no entity").id
    empty_entity = scope.entities.create(entity_name="Empty").entity_id
    empty = scope.conversations.create(entity_id=empty_entity).id
    for session in (bare, empty):
        turn = chat(scope, session, "What is the warranty?")
        assert turn.message is not None
        assert turn.message.content == NOTHING_FOUND
        assert turn.message.metadata == {"citations": []}
        assert [m.role for m in history(scope, session)] == ["user", "assistant"]


def test_extractive_answer_streams_in_pieces() -> None:
    passages = [Passage(n=1, chunk_id="c1", text="Cats sleep a lot. Dogs bark at night.",
                        filename="pets.txt"),
                Passage(n=2, chunk_id="c2", text="Cats purr when content.")]
    responder = ExtractiveResponder()
    pieces = list(responder.respond("Why do cats purr?", passages, []))
    assert len(pieces) > 5
    assert "".join(pieces) == responder.answer("Why do cats purr?", passages)
    assert "\u201cCats purr when content.\u201d [2]" in "".join(pieces)
    assert "".join(responder.respond("anything", [], [])) == NOTHING_FOUND


def test_bad_input_and_other_sessions_store_nothing(vault: Vault, scope: Scope) -> None:
    session = scope.conversations.create().id
    with pytest.raises(Invalid):
        start_chat(scope, session, "question", k=0)
    with pytest.raises(Invalid):
        start_chat(scope, session, "question", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        start_chat(scope, session, "   ")
    assert history(scope, session) == []
    other = vault.for_user(vault.users.register("other@example.com", "password-1").id)
    with pytest.raises(NotFound):
        chat(other, session, "question")
    assert history(scope, session) == []


# -- the openai responder ----------------------------------------------------------

def test_openai_reply_streams_into_the_stored_message(scope: Scope, fake_llm: FakeLLM
                                                      ) -> None:
    session = documents_session(scope)
    scope.conversations.append(session, "user", "Earlier question")
    scope.conversations.append(session, "assistant", "Earlier answer")
    turn = chat(scope, session, "How long does the battery last?", k=3,
                responder=openai(fake_llm))
    assert turn.message is not None
    assert (turn.message.status, turn.message.author) == ("complete", "openai")
    assert turn.message.content == "".join(DEFAULT_TOKENS)
    assert len(turn.message.metadata["citations"]) == 2  # one chunk per document

    sent = fake_llm.requests[0]
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert fake_llm.headers[0]["Authorization"] == "Bearer sk-test"
    system, *recent, question = sent["messages"]
    assert system["role"] == "system" and "[1] (battery.md)" in system["content"]
    assert "twelve hours" in system["content"] and "[2] (warranty.txt)" in system["content"]
    assert recent == [{"role": "user", "content": "Earlier question"},
                      {"role": "assistant", "content": "Earlier answer"}]
    assert question == {"role": "user", "content": "How long does the battery last?"}


def test_user_message_is_stored_when_the_responder_fails_at_once(
        scope: Scope, fake_llm: FakeLLM) -> None:
    session = documents_session(scope)
    fake_llm.behaviour = "fail"
    with pytest.raises(ResponderFailed) as caught:
        chat(scope, session, "How long does the battery last?", responder=openai(fake_llm))
    assert caught.value.status == 502
    assert "500" in caught.value.detail and "the model is on fire" in caught.value.detail
    assert "sk-test" not in caught.value.detail
    user, reply = history(scope, session)
    assert (user.role, user.status, user.content) == ("user", "complete",
                                                      "How long does the battery last?")
    assert (reply.status, reply.content) == ("failed", "")
    assert reply.metadata["citations"]  # what it was given is still on record


@pytest.mark.parametrize("behaviour", ["stall", "error_event", "cut"])
def test_a_broken_stream_leaves_the_reply_failed_with_its_text(
        scope: Scope, fake_llm: FakeLLM, behaviour: str) -> None:
    session = scope.conversations.create().id
    fake_llm.behaviour = behaviour  # type: ignore[assignment]
    fake_llm.keepalive_s = 0.05  # keep-alives are not tokens
    turn = start_chat(scope, session, "Tell me", responder=openai(fake_llm, timeout_s=0.5))
    message = turn.run()
    assert (message.status, message.content) == ("failed", "".join(DEFAULT_TOKENS[:2]))
    assert turn.error is not None
    expected = {"stall": "no token for 0.5 s", "error_event": "rate limited mid-stream",
                "cut": "before [DONE]"}[behaviour]
    assert expected in turn.error
    stored = scope.conversations.get_message(turn.message_id)
    assert (stored.status, stored.content) == ("failed", message.content)


def test_an_unreachable_endpoint_fails_the_reply(scope: Scope, fake_llm: FakeLLM) -> None:
    session = scope.conversations.create().id
    url = fake_llm.url
    fake_llm.stop()
    with pytest.raises(ResponderFailed, match="could not be reached"):
        chat(scope, session, "hello", responder=OpenAIResponder(url, "m", timeout_s=2))
    assert [m.status for m in history(scope, session)] == ["complete", "failed"]


def test_make_responder_follows_the_settings(settings: Settings, fake_llm: FakeLLM) -> None:
    assert make_responder(settings).name == "extractive"
    chosen = make_responder(revalidate(settings, responder="openai",
                                       llm_base_url=fake_llm.url, llm_timeout_s=5,
                                       llm_context_tokens=1000))
    assert isinstance(chosen, OpenAIResponder)
    assert (chosen.url, chosen.timeout_s, chosen.context_tokens) == (
        fake_llm.url + "/chat/completions", 5, 1000)


def test_chat_completions_url() -> None:
    assert chat_completions_url("https://api.openai.com/v1") == (
        "https://api.openai.com/v1/chat/completions")
    assert chat_completions_url("http://h:8080/") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h/x/v1/chat/completions") == (
        "http://h/x/v1/chat/completions")


def _message(role: str, content: str, seq: int) -> Message:
    return Message(id=f"m{seq}", conversation_id="c", role=role,  # type: ignore[arg-type]
                   content=content, status="complete", seq=seq,
                   created_at=datetime.now(UTC))


def test_prompt_fits_the_context_budget() -> None:
    passages = [Passage(n=i, chunk_id=f"c{i}", text=f"passage {i} " + "words " * 300,
                        filename=f"f{i}.txt") for i in range(1, 11)]
    past = [_message("user" if i % 2 else "assistant", f"message {i} " + "chat " * 50, i)
            for i in range(1, 41)]
    for budget in (600, 2000, 6000, 20000):
        prompt = build_prompt("What is it?", passages, past, budget)
        total = sum(estimate_tokens(m["content"]) + 4 for m in prompt)
        assert total <= budget, (budget, total)
        assert "[1] (f1.txt)" in prompt[0]["content"]
        assert prompt[-1] == {"role": "user", "content": "What is it?"}
        kept = [m["content"] for m in prompt[1:-1]]
        assert kept == [m.content for m in past[len(past) - len(kept):]]  # newest, in order
    roomy = build_prompt("What is it?", passages, past, 100_000)
    assert "[10] (f10.txt)" in roomy[0]["content"] and len(roomy) == 42
    huge = build_prompt("why " * 10_000, passages, past, 1000)
    assert sum(estimate_tokens(m["content"]) + 4 for m in huge) <= 1000


def test_token_estimate() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10
    assert estimate_tokens("数据库") == 3


class _Broken:
    """A responder with a bug: one piece, then an exception that is not ResponderFailed."""

    name = "broken"

    def respond(self, question: str, passages: object, history: object) -> Iterator[str]:
        yield "partial "
        raise RuntimeError("bug")


def test_a_responder_bug_fails_only_its_reply(scope: Scope) -> None:
    session = scope.conversations.create().id
    with pytest.raises(ResponderFailed, match="broken responder failed"):
        chat(scope, session, "hi", responder=_Broken())  # type: ignore[arg-type]
    user, reply = history(scope, session)
    assert (reply.author, reply.status, reply.content) == ("broken", "failed", "partial ")
    assert chat(scope, session, "again").message is not None  # the session goes on
