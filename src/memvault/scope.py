"""The owner-bound view of a vault: every store reached through it sees only
that owner's records, whichever interface calls in."""

from __future__ import annotations

from functools import cached_property

from .stores._context import StoreContext
from .stores.annotations import AnnotationStore
from .stores.collections import CollectionStore
from .stores.conversations import ConversationStore
from .stores.entities import EntityStore
from .stores.extractions import ExtractionStore
from .stores.files import FileStore
from .stores.graphs import GraphStore

__all__ = ["Scope"]


class Scope:
    """Assembles one owner's stores from the vault's store context."""

    def __init__(self, ctx: StoreContext, owner_id: str) -> None:
        self.ctx = ctx
        self.owner_id = owner_id

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

    def graph(self, name: str = "default") -> GraphStore:
        """The owner's knowledge graph called ``name`` (created by its first write).

        A method, not a cached property: a store per name, cheap to build.
        """
        return GraphStore(self.ctx, self.owner_id, name)
