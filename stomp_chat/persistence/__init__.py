"""The chat's storage: adbapi on SQLite or PostgreSQL, migrations, write-behind batching."""

from stomp_chat.persistence.members import MemberNameTaken, MemberNotFound
from stomp_chat.persistence.memory import MemoryChatStore
from stomp_chat.persistence.messages import MessagesRejected, SeqCollision
from stomp_chat.persistence.model import ChatMessage, Member, Room, utc_isoformat
from stomp_chat.persistence.rooms import RoomAlreadyExists, RoomNotFound
from stomp_chat.persistence.schema import (
    MIGRATIONS,
    Migration,
    SchemaTooNew,
    current_version,
    latest_version,
    migrate,
    migrate_blocking,
)
from stomp_chat.persistence.store import AdbapiChatStore, ChatStore
from stomp_chat.persistence.url import (
    DEFAULT_DB_TIMEOUT,
    ChatConnectionPool,
    DatabaseConfig,
    DatabaseTimeout,
    DialectName,
    database_unavailable,
    make_pool,
    parse_database_url,
)
from stomp_chat.persistence.writebehind import (
    BufferFull,
    PausableProducer,
    WriteBehindWriter,
    WriterStopped,
)

__all__ = [
    "DEFAULT_DB_TIMEOUT",
    "MIGRATIONS",
    "AdbapiChatStore",
    "BufferFull",
    "ChatConnectionPool",
    "ChatMessage",
    "ChatStore",
    "DatabaseConfig",
    "DatabaseTimeout",
    "DialectName",
    "Member",
    "MemberNameTaken",
    "MemberNotFound",
    "MemoryChatStore",
    "MessagesRejected",
    "Migration",
    "PausableProducer",
    "Room",
    "RoomAlreadyExists",
    "RoomNotFound",
    "SchemaTooNew",
    "SeqCollision",
    "WriteBehindWriter",
    "WriterStopped",
    "current_version",
    "database_unavailable",
    "latest_version",
    "make_pool",
    "migrate",
    "migrate_blocking",
    "parse_database_url",
    "utc_isoformat",
]
