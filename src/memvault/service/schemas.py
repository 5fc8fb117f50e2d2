"""Request bodies. Responses are the records in ``memvault.models``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ..ids import INT32_MAX
from ..models import Conversation, Role, SearchMode
from ..stores.agents import MAX_INSTRUCTIONS as AGENT_MAX_INSTRUCTIONS
from ..stores.agents import MAX_TOOLS as AGENT_MAX_TOOLS
from ..stores.collections import MAX_ITEMS, MAX_K
from ..stores.graphs import MAX_BATCH as GRAPH_MAX_BATCH
from ..stores.runs import MAX_ERROR_CHARS as RUN_MAX_ERROR_CHARS
from ..stores.runs import StepStatus

__all__ = ["RegisterIn", "LoginIn", "ForgetMeIn", "ForgetMeOut", "EntityIn", "EntityPatch",
           "ConversationIn", "ConversationPatch", "MessageIn", "ChunkIn", "ChunksIn", "CompleteIn",
           "ChatSessionIn", "ChatSession", "ChunkAck", "RecordIn", "RecordsIn", "SearchFilterIn",
           "SearchWeightsIn", "SearchIn", "ExtractionIn", "AnnotationIn", "AnnotationPatch"]

#: A finite JSON number (an int is taken as a float; ``"1.0"``, ``true`` and NaN are not).
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegisterIn(_In):
    email: StrictStr = Field(max_length=320)
    password: StrictStr = Field(max_length=1024)
    name: StrictStr | None = Field(None, max_length=200)


class LoginIn(_In):
    email: StrictStr = Field(max_length=320)
    password: StrictStr = Field(max_length=1024)


class ForgetMeIn(_In):
    """``DELETE /api/auth/me``: the account's password, confirming."""

    password: StrictStr = Field(max_length=1024)


class ForgetMeOut(BaseModel):
    """Rows removed per kind, and ``blobs``: blobs no one referenced any more."""

    deleted: dict[str, int]


class EntityIn(_In):
    entity_id: StrictStr | None = None
    entity_name: StrictStr = Field(min_length=1, max_length=500)
    description: StrictStr | None = Field(None, max_length=100_000)
    metadata: dict[str, Any] | None = None


class EntityPatch(_In):
    entity_name: StrictStr | None = Field(None, min_length=1, max_length=500)
    description: StrictStr | None = Field(None, max_length=100_000)
    metadata: dict[str, Any] | None = None


class ConversationIn(_In):
    title: StrictStr | None = Field(None, max_length=500)
    entity_id: StrictStr | None = None
    participants: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class ConversationPatch(_In):
    title: StrictStr | None = Field(None, max_length=500)
    participants: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class MessageIn(_In):
    role: Role
    content: StrictStr = ""
    author: StrictStr | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None
    status: Literal["complete", "streaming"] = "complete"


class ChunkIn(_In):
    seq: StrictInt = Field(ge=1, le=INT32_MAX)
    text: StrictStr


class ChunksIn(_In):
    """Either one chunk ``{seq, text}`` or several ``{chunks: [...]}``."""

    seq: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    text: StrictStr | None = None
    chunks: list[ChunkIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> ChunksIn:
        single = self.seq is not None or self.text is not None
        if single == (self.chunks is not None):
            raise ValueError("send either {seq, text} or {chunks: [{seq, text}, ...]}")
        if single and (self.seq is None or self.text is None):
            raise ValueError("a chunk needs both seq and text")
        return self

    def pairs(self) -> list[tuple[int, str]]:
        if self.chunks is not None:
            return [(c.seq, c.text) for c in self.chunks]
        assert self.seq is not None and self.text is not None
        return [(self.seq, self.text)]


class CompleteIn(_In):
    status: Literal["complete", "failed"] = "complete"


class ChatSessionIn(_In):
    entity_id: StrictStr
    title: StrictStr | None = Field(None, max_length=500)


class ChatSession(Conversation):
    """Seed 000's view of a conversation: the same record, ``session_id`` = ``id``."""

    session_id: str

    @classmethod
    def of(cls, conv: Conversation) -> ChatSession:
        return cls(session_id=conv.id, **conv.model_dump())


class ChunkAck(BaseModel):
    message_id: str
    last_seq: int
    status: str = "streaming"


class _Exact(BaseModel):
    """Retrieval bodies refuse unknown fields: a misspelt ``filter`` or ``weights``
    silently ignored would answer a different search than the one asked for."""

    model_config = ConfigDict(extra="forbid")


class RecordIn(_Exact):
    """One vector record; the collection store checks lengths, ids and dimensions."""

    id: StrictStr | None = None
    text: StrictStr
    metadata: dict[str, Any] | None = None
    embedding: list[Number] | None = None


class RecordsIn(_Exact):
    # Counted here too: 1,001 records are refused before any is embedded.
    items: list[RecordIn] = Field(min_length=1, max_length=MAX_ITEMS)


class SearchFilterIn(_Exact):
    doc_id: StrictStr | list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class SearchWeightsIn(_Exact):
    """Either weight may be left out (it keeps the store's default)."""

    vector: Number | None = None
    text: Number | None = None


class SearchIn(_Exact):
    entity_id: StrictStr
    query: StrictStr | None = None
    embedding: list[Number] | None = None
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    mode: SearchMode = "hybrid"
    filter: SearchFilterIn | None = None
    rrf_k: Number | None = None
    weights: SearchWeightsIn | None = None

    # Ranges of rrf_k and weights, and the query's length, are the store's to check.
    @model_validator(mode="after")
    def _one_input(self) -> SearchIn:
        if (self.query is None) == (self.embedding is None):
            raise ValueError("send exactly one of query or embedding")
        if self.embedding is not None and self.mode != "vector":
            raise ValueError("embedding is only accepted with mode 'vector'")
        return self


class ExtractionIn(_Exact):
    """Extractions and annotations refuse unknown fields too: a misspelt
    ``note`` or ``start`` silently dropped would store a different record."""

    # ``schema`` on the wire; ``schema_`` here (the name would shadow BaseModel's).
    schema_: StrictStr = Field(alias="schema", min_length=1, max_length=200)
    data: dict[str, Any] | list[Any]
    model: StrictStr | None = Field(None, max_length=200)


class AnnotationIn(_Exact):
    # Ranges (0 <= start <= end, page >= 1) are the annotation store's to check.
    label: StrictStr = Field(min_length=1, max_length=200)
    note: StrictStr | None = None
    start: StrictInt | None = None
    end: StrictInt | None = None
    page: StrictInt | None = None
    chunk_id: StrictStr | None = Field(None, max_length=200)
    data: dict[str, Any] | None = None


class AnnotationPatch(_Exact):
    """Only the fields sent change; ``null`` clears one (not ``label``)."""

    label: StrictStr | None = Field(None, min_length=1, max_length=200)
    note: StrictStr | None = None
    start: StrictInt | None = None
    end: StrictInt | None = None
    page: StrictInt | None = None
    chunk_id: StrictStr | None = Field(None, max_length=200)
    data: dict[str, Any] | None = None


# -- knowledge graphs (issue 7): the graph store checks ids, types and values --

class GraphIn(_Exact):
    description: StrictStr | None = Field(None, max_length=100_000)
    metadata: dict[str, Any] | None = None


class GraphNodeIn(_Exact):
    type: StrictStr
    data: dict[str, Any] | None = None


class GraphNodePatch(_Exact):
    """``data`` is an RFC 7396 merge patch: a key set to ``null`` is removed."""

    type: StrictStr | None = None
    data: dict[str, Any] | None = None


class GraphEdgeKeyIn(_Exact):
    # ``from`` on the wire; ``from_`` here (a Python keyword).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: StrictStr = Field(alias="from")
    to: StrictStr
    type: StrictStr


class GraphEdgeIn(GraphEdgeKeyIn):
    strength: Number = 1.0
    data: dict[str, Any] | None = None


class GraphMatchIn(_Exact):
    type: StrictStr | None = None
    data: dict[str, Any] | None = None


class GraphPatternIn(_Exact):
    type: StrictStr
    description: StrictStr = ""
    trigger_conditions: list[StrictStr] = Field(default_factory=list)
    confidence: Number = 1.0
    match: GraphMatchIn | None = None
    data: dict[str, Any] | None = None


class GraphBatchNodeIn(GraphNodeIn):
    id: StrictStr


class GraphBatchPatternIn(GraphPatternIn):
    id: StrictStr


class GraphBatchIn(_Exact):
    """At most ``MAX_BATCH`` items in all (the store counts them)."""

    nodes: list[GraphBatchNodeIn] = Field(default_factory=list, max_length=GRAPH_MAX_BATCH)
    edges: list[GraphEdgeIn] = Field(default_factory=list, max_length=GRAPH_MAX_BATCH)
    patterns: list[GraphBatchPatternIn] = Field(default_factory=list,
                                                max_length=GRAPH_MAX_BATCH)
    delete_nodes: list[StrictStr] = Field(default_factory=list, max_length=GRAPH_MAX_BATCH)
    delete_edges: list[GraphEdgeKeyIn] = Field(default_factory=list,
                                               max_length=GRAPH_MAX_BATCH)


__all__ += ["GraphIn", "GraphNodeIn", "GraphNodePatch", "GraphEdgeKeyIn", "GraphEdgeIn",
            "GraphMatchIn", "GraphPatternIn", "GraphBatchNodeIn", "GraphBatchPatternIn",
            "GraphBatchIn"]


# -- caches (/api/cache) ----------------------------------------------------------------

class CacheValueIn(_Exact):
    """``PUT /api/cache/{namespace}/{key}``: any JSON value (``null`` too)."""

    value: Any
    #: Seconds until the entry expires; absent: it does not.
    ttl_s: Annotated[Number, Field(gt=0)] | None = None


class CacheEntryOut(BaseModel):
    key: str
    value: Any
    expires_at: datetime | None


class CacheStatsOut(BaseModel):
    """One namespace's counters in the process that answers."""

    namespace: str
    hits: int
    misses: int
    hit_ratio: float
    sets: int
    evictions: int


__all__ += ["CacheValueIn", "CacheEntryOut", "CacheStatsOut"]


# -- agents and runs (issue 8): the stores check ids, JSON and what they own ------

class AgentIn(_In):
    name: StrictStr = Field(min_length=1, max_length=200)
    kind: StrictStr | None = Field(None, max_length=64)
    instructions: StrictStr | None = Field(None, max_length=AGENT_MAX_INSTRUCTIONS)
    model: StrictStr | None = Field(None, max_length=200)
    tools: list[Annotated[StrictStr, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=AGENT_MAX_TOOLS)
    config: dict[str, Any] | None = None


class AgentPatch(_In):
    """Only the fields sent change; ``null`` clears one (not ``name``)."""

    name: StrictStr | None = Field(None, min_length=1, max_length=200)
    kind: StrictStr | None = Field(None, max_length=64)
    instructions: StrictStr | None = Field(None, max_length=AGENT_MAX_INSTRUCTIONS)
    model: StrictStr | None = Field(None, max_length=200)
    tools: list[Annotated[StrictStr, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=AGENT_MAX_TOOLS)
    config: dict[str, Any] | None = None


class RunIn(_In):
    workflow: StrictStr = Field(min_length=1, max_length=200)
    agent_id: StrictStr | None = Field(None, max_length=64)
    conversation_id: StrictStr | None = Field(None, max_length=64)
    input: Any = None
    metadata: dict[str, Any] | None = None


class RunStepIn(_In):
    """``step`` (optional) makes the append idempotent: see ``RunStore.append_step``."""

    agent: StrictStr | None = Field(None, max_length=200)
    action: StrictStr = Field(min_length=1, max_length=200)
    status: StepStatus = "completed"
    result: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    step: StrictInt | None = Field(None, ge=1, le=INT32_MAX)


class RunCompleteIn(_In):
    status: Literal["completed", "failed", "cancelled"]
    output: Any = None
    error: StrictStr | None = Field(None, max_length=RUN_MAX_ERROR_CHARS)


__all__ += ["AgentIn", "AgentPatch", "RunIn", "RunStepIn", "RunCompleteIn"]
