"""The owner-bound view of a vault: every store reached through it sees only
that owner's records, whichever interface calls in."""

from __future__ import annotations

from functools import cached_property

from .cache.core import Cache, Caches
from .stores._context import StoreContext
from .stores.agents import AgentStore
from .stores.annotations import AnnotationStore
from .stores.collections import CollectionStore
from .stores.conversations import ConversationStore
from .stores.entities import EntityStore
from .stores.extractions import ExtractionStore
from .stores.files import FileStore
from .stores.graphs import GraphStore
from .stores.runs import RunStore

__all__ = ["Scope"]


class Scope:
    """Assembles one owner's stores from the vault's store context."""

    def __init__(self, ctx: StoreContext, owner_id: str, caches: Caches | None = None) -> None:
        self.ctx = ctx
        self.owner_id = owner_id
        self._caches = caches

    @cached_property
    def entities(self) -> EntityStore:
        return EntityStore(self.ctx, self.owner_id)

    @cached_property
    def files(self) -> FileStore:
        return FileStore(self.ctx, self.owner_id)

    @cached_property
    def conversations(self) -> ConversationStore:
        return ConversationStore(self.ctx, self.owner_id)

    @cached_property
    def collections(self) -> CollectionStore:
        return CollectionStore(self.ctx, self.owner_id)

    @cached_property
    def extractions(self) -> ExtractionStore:
        return ExtractionStore(self.ctx, self.owner_id)

    @cached_property
    def annotations(self) -> AnnotationStore:
        return AnnotationStore(self.ctx, self.owner_id)

    @cached_property
    def agents(self) -> AgentStore:
        return AgentStore(self.ctx, self.owner_id)

    @cached_property
    def runs(self) -> RunStore:
        return RunStore(self.ctx, self.owner_id)

    def cache(self, namespace: str) -> Cache:
        """The owner's cache namespace ``namespace`` (no other user sees it).

        Raises:
            Invalid: a namespace that is not 1-200 letters, digits, ``_ - . :``.
        """
        if self._caches is None:
            raise RuntimeError("this scope was built without the vault's caches")
        return self._caches.view(self.owner_id, namespace)

    def graph(self, name: str = "default") -> GraphStore:
        """The owner's knowledge graph called ``name`` (created by its first write).

        A method, not a cached property: a store per name, cheap to build.
        """
        return GraphStore(self.ctx, self.owner_id, name)
