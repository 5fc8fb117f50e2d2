"""memvault: durable memory for AI applications.

    import memvault
    vault = memvault.open()                 # SQLite under ./data
    me = vault.users.register("a@b.co", "correct horse")
    ws = vault.for_user(me.id).entities.create("Research")
"""

from .errors import (
    ConfigError,
    Conflict,
    Invalid,
    MemvaultError,
    MigrationFailed,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from .models import Chunk, Conversation, Document, Entity, Message, Page, Token, User
from .settings import Settings, load_settings
from .vault import Vault, open

__version__ = "0.1.0"

__all__ = [
    "open", "Vault", "Settings", "load_settings", "__version__",
    "Page", "User", "Token", "Entity", "Document", "Conversation", "Message", "Chunk",
    "MemvaultError", "ConfigError", "MigrationFailed", "Invalid", "Unauthorized", "NotFound",
    "Conflict", "PayloadTooLarge", "TooManyRequests", "Unavailable",
]
