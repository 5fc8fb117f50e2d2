"""The owner-bound view of a vault: every store reached through it sees only
that owner's records, whichever interface calls in."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from .stores.conversations import ConversationStore
from .stores.entities import EntityStore
from .stores.files import FileStore

if TYPE_CHECKING:
    from .vault import Vault

__all__ = ["Scope"]


class Scope:
    def __init__(self, vault: Vault, owner_id: str) -> None:
        self.vault = vault
        self.owner_id = owner_id

    @cached_property
    def entities(self) -> EntityStore:
        return EntityStore(self)

    @cached_property
    def files(self) -> FileStore:
        return FileStore(self)

    @cached_property
    def conversations(self) -> ConversationStore:
        return ConversationStore(self)
