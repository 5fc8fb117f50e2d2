"""Chat over an entity's documents (seed 000's ``/api/chat``), for the library
and the service alike.

A turn goes in this order, so that a failure later never loses what came
before: the user's message is stored first; then the passages are retrieved
from the session's entity (none when the session has no entity); then the
reply is opened as a durable streaming message (issue 3's ``Reply``; author =
the responder's name, ``metadata.citations`` = the numbered passages) and the
responder's pieces are written into it. A responder error or stall ends the
reply ``failed`` with the text written so far.

``start_chat`` does the first three steps and returns a ``ChatTurn`` whose
``run()`` streams the answer: the service runs it in a thread of its own, so a
client that disconnects does not stop the reply. ``chat`` does both at once.
Search itself is the collections store's; what a responder says is
``responders.py``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

import structlog

from ..errors import Invalid, MemvaultError
from ..models import Message, SearchMode
from ..stores.collections import MAX_K
from .responders import Passage, Responder, ResponderFailed, make_responder

if TYPE_CHECKING:
    from ..scope import Scope
    from ..stores.streaming import Reply

__all__ = ["ChatTurn", "start_chat", "chat", "run_in_background",
           "HISTORY_MESSAGES"]

log = structlog.get_logger(__name__)

#: Recent messages of the conversation offered to the responder (it keeps
#: those that fit its context).
HISTORY_MESSAGES = 20
MODES: tuple[str, ...] = get_args(SearchMode)


@dataclass(eq=False)
class ChatTurn:
    """One question and its reply, between ``start_chat`` and ``run``."""

    session_id: str
    question: str
    user_message: Message
    passages: list[Passage]
    history: list[Message]
    responder: Responder
    reply: Reply
    #: The finished reply (set by ``run``).
    message: Message | None = None
    #: Why the responder failed (set by ``run``); None when it answered.
    error: str | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def message_id(self) -> str:
        return self.reply.message_id

    @property
    def citations(self) -> list[dict[str, object]]:
        return [p.citation() for p in self.passages]

    def run(self) -> Message:
        """Stream the responder's answer into the reply and end it.

        Returns the finished reply: ``complete``, or ``failed`` (with ``error``
        set) when the responder raised or stalled.

        Raises:
            MemvaultError: the reply could not be stored (e.g. its conversation
                was deleted meanwhile, or the vault closed).
        """
        try:
            return self._run()
        finally:
            self._done.set()

    def _run(self) -> Message:
        reply = self.reply
        with reply:  # a storage error leaves the reply failed and propagates
            pieces = _guarded(self)
            try:
                for piece in pieces:
                    reply.write(piece)
            finally:
                pieces.close()  # the responder's connection, if we stop early
            message = reply.finish("complete" if self.error is None else "failed")
        self.message = message
        return message

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until ``run`` has returned (in whatever thread runs it)."""
        return self._done.wait(timeout)


def _guarded(turn: ChatTurn) -> Generator[str, None, None]:
    """The responder's non-empty pieces; a failure (raised when called or while
    iterating) ends them and is recorded on ``turn``."""
    answer: Iterator[str] | None = None
    try:
        answer = iter(turn.responder.respond(turn.question, turn.passages, turn.history))
        for piece in answer:
            if not isinstance(piece, str):
                turn.error = f"the {turn.responder.name} responder produced a non-text piece"
                return
            if piece:
                yield piece
    except ResponderFailed as exc:
        turn.error = exc.detail
        log.warning("responder failed", responder=turn.responder.name,
                    message_id=turn.message_id, error=exc.detail)
    except Exception as exc:  # noqa: BLE001 - any responder bug fails the reply only
        turn.error = f"the {turn.responder.name} responder failed ({type(exc).__name__})"
        log.exception("responder raised", responder=turn.responder.name,
                      message_id=turn.message_id)
    finally:
        close = getattr(answer, "close", None)
        if callable(close):  # a generator holding a connection
            close()


def _check(message: object, k: object, mode: object) -> None:
    if not isinstance(message, str) or not message.strip():
        raise Invalid("message must be non-empty text", field="message")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise Invalid(f"k must be an integer from 1 to {MAX_K}", field="k")
    if mode not in MODES:
        raise Invalid(f"mode must be one of {', '.join(MODES)}", field="mode")


def start_chat(scope: Scope, session_id: str, message: str, *, k: int = 5,
               mode: SearchMode = "hybrid", responder: Responder | None = None) -> ChatTurn:
    """Store the user's message, retrieve passages and open the reply.

    Args:
        scope: the owner's view of the vault.
        session_id: the conversation (seed 000's chat session).
        message: the user's question.
        k: passages to retrieve (1 to ``MAX_K``).
        mode: ``hybrid``, ``vector`` or ``text`` search.
        responder: defaults to the one ``MEMVAULT_RESPONDER`` names.

    Raises:
        NotFound: no such conversation of this owner.
        Invalid: bad ``message``, ``k`` or ``mode`` (nothing stored).
        MemvaultError: retrieval failed (e.g. ``Conflict`` when the entity's
            collection was built with another embedder); the user's message
            stays stored, no reply is opened.
    """
    _check(message, k, mode)
    responder = responder or make_responder(scope.ctx.settings)
    convs = scope.conversations
    user_message = convs.append(session_id, "user", message)  # before anything else
    conv = convs.get(session_id)
    history = convs.messages(session_id, HISTORY_MESSAGES, before=user_message.id).items
    passages: list[Passage] = []
    if conv.entity_id is not None:
        found = scope.collections.search(conv.entity_id, query=message, k=k, mode=mode)
        passages = [Passage.of(n, hit) for n, hit in enumerate(found.results, start=1)]
    reply = convs.stream(session_id, author=responder.name,
                         metadata={"citations": [p.citation() for p in passages]})
    return ChatTurn(session_id=session_id, question=message, user_message=user_message,
                    passages=passages, history=list(history), responder=responder,
                    reply=reply)


def chat(scope: Scope, session_id: str, message: str, *, k: int = 5,
         mode: SearchMode = "hybrid",
         responder: Responder | None = None) -> ChatTurn:
    """Ask a question of a session's documents and wait for the whole reply.

    Returns the finished turn (``turn.user_message``, ``turn.message``).

    Raises:
        ResponderFailed: the responder failed; the reply is stored ``failed``
            with its text so far, the user's message too (to get at them, call
            ``start_chat`` and ``run`` instead).
        NotFound, Invalid, MemvaultError: as ``start_chat``.
    """
    turn = start_chat(scope, session_id, message, k=k, mode=mode, responder=responder)
    turn.run()
    if turn.error is not None:
        raise ResponderFailed(turn.error)
    return turn


def run_in_background(turn: ChatTurn) -> threading.Thread:
    """Run ``turn`` in a daemon thread of its own, independent of any request:
    a storage failure there is logged (the reply then ends ``failed`` or, if
    the vault closes, ``interrupted``)."""
    def target() -> None:
        try:
            turn.run()
        except MemvaultError as exc:
            log.warning("chat reply could not be stored", message_id=turn.message_id,
                        error=exc.detail)
        except Exception:  # noqa: BLE001 - a thread must not die silently
            log.exception("chat reply failed", message_id=turn.message_id)

    thread = threading.Thread(target=target, name=f"memvault-chat-{turn.message_id}",
                              daemon=True)
    thread.start()
    return thread
