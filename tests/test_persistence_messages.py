"""Saving message batches (persistence/messages.py): every value round-trips, retries are safe,
what cannot be stored is rejected whole and collisions are reported; on SQLite, PostgreSQL
and (where the contract is shared) the in-memory twin."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
import pytest_twisted

from stomp_chat.persistence import (
    AdbapiChatStore,
    ChatMessage,
    ChatStore,
    MessagesRejected,
    migrate,
)
from stomp_chat.persistence import messages as messages_module
from tests.chatmessages import chat_message, seqs

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_saved_messages_come_back_unchanged(store: ChatStore) -> None:
    """Every field survives a save and load, the time as an aware UTC datetime."""
    await store.ensure_room(1)
    sent = ChatMessage(
        room_id=1,
        seq=1,
        message_id="0b9e-uuid",
        type="ENTER",
        sender_id=77,
        text="77님이 입장하였습니다. \U0001f600 'quotes' \"and\" ?%s",
        created_at=datetime(2024, 5, 1, 21, 0, 0, 654321, tzinfo=timezone(timedelta(hours=9))),
    )
    await store.save_messages([sent])
    [loaded] = await store.load_messages(1, limit=10)
    assert loaded == sent
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert loaded.to_json_dict()["createdAt"] == "2024-05-01T12:00:00.654Z"


@pytest_twisted.ensureDeferred
async def test_saving_creates_missing_rooms(store: ChatStore) -> None:
    """A message to a room nobody created yet creates that room (the seed's behaviour)."""
    await store.save_messages([chat_message(31, 1), chat_message(32, 1)])
    assert [room.id for room in await store.list_rooms()] == [31, 32]
    follow_up = await store.create_room("after")
    assert follow_up.id not in (31, 32)


@pytest_twisted.ensureDeferred
async def test_saving_again_is_harmless(store: ChatStore) -> None:
    """Re-saving a batch (a retry after an unknown outcome) stores nothing twice and fails
    nothing, while the new messages of an overlapping batch are stored."""
    first = [chat_message(1, seq) for seq in range(1, 6)]
    await store.save_messages(first)
    await store.save_messages(first)
    overlapping = [chat_message(1, seq) for seq in range(4, 9)]
    await store.save_messages(overlapping)
    assert seqs(await store.load_messages(1, limit=100)) == list(range(1, 9))


@pytest_twisted.ensureDeferred
async def test_a_large_batch_is_stored_whole(store: ChatStore) -> None:
    """A batch larger than one INSERT statement holds is stored completely and in order,
    and re-saving an overlapping large batch adds only the new messages."""
    await store.save_messages([chat_message(1, seq) for seq in range(1, 451)])
    await store.save_messages([chat_message(1, seq) for seq in range(201, 1002)])
    loaded = await store.load_messages(1, limit=2000)
    assert seqs(loaded) == list(range(1, 1002))
    assert loaded[-1] == chat_message(1, 1001)


@pytest_twisted.ensureDeferred
async def test_a_batch_repeating_a_message_keeps_the_first(store: ChatStore) -> None:
    """Within one batch, a second message with the same (room_id, seq) is skipped, not an
    error, just as across batches."""
    first = chat_message(1, 2, text="first")
    await store.save_messages([chat_message(1, 1), first, chat_message(1, 2, text="second")])
    assert await store.load_messages(1, limit=10) == [chat_message(1, 1), first]


@pytest_twisted.ensureDeferred
async def test_messages_are_identified_by_room_and_seq_not_message_id(store: ChatStore) -> None:
    """(room_id, seq) decides what is already stored; message_id is stored as given (the chat
    derives it from the two, so the database does not check it a second time)."""
    original = chat_message(1, 1, text="original")
    await store.save_messages([original])
    await store.save_messages([replace(chat_message(1, 1, text="changed"), message_id="other")])
    twin = replace(chat_message(2, 7), message_id=original.message_id)
    await store.save_messages([twin])
    assert await store.load_messages(1, limit=10) == [original]
    assert await store.load_messages(2, limit=10) == [twin]


#: Text that a hand-built PostgreSQL array literal or a SQL string could get wrong.
AWKWARD_TEXTS = [
    "",
    " ",
    "  padded  ",
    "NULL",
    "null",
    '"quoted"',
    '"',
    "\\",
    "back\\slash\\",
    '\\"',
    "{}",
    "{a,b}",
    "a,b",
    "{",
    "}",
    "'single' ''",
    "%s %(x)s ? $1",
    "line\nbreak\r\nand\ttab",
    "\\N",
    "\\.",
    "77님이 입장하였습니다.",
    "\U0001f600\U0001f469\u200d\U0001f469\u200d\U0001f467 e\u0301 \u202eRTL\u202c",
    "\u2028\u2029\ufeff\u00a0\u3000",
    "\x01\x1f\x7f",
    "\U0010ffff",
]


@pytest_twisted.ensureDeferred
async def test_awkward_text_survives_a_round_trip(store: ChatStore) -> None:
    """Quotes, backslashes, braces, commas, "NULL", empty and blank strings, line breaks,
    control characters and every kind of Unicode come back unchanged, in every column that
    holds text, whether or not the batch needs escaping."""
    plain = [chat_message(1, seq) for seq in range(1, 4)]
    awkward = [
        replace(
            chat_message(2, seq, text=text),
            message_id=f"{text}-{seq}",
            type=text or "TALK",
        )
        for seq, text in enumerate(AWKWARD_TEXTS, start=1)
    ]
    await store.save_messages(plain)
    await store.save_messages(awkward)
    assert await store.load_messages(1, limit=100) == plain
    assert await store.load_messages(2, limit=100) == awkward


@pytest_twisted.ensureDeferred
async def test_times_come_back_exact_across_the_whole_range(store: ChatStore) -> None:
    """Every microsecond survives, for times before 1970, far in the future, in any offset,
    and for many messages sharing one time object (as the chat's do)."""
    shared = datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC)
    times = [
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-11, minutes=-30))),
        datetime(2038, 1, 19, 3, 14, 8, 123457, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        shared,
        shared,
        shared,
    ]
    sent = [replace(chat_message(1, seq), created_at=t) for seq, t in enumerate(times, start=1)]
    await store.save_messages(sent)
    loaded = await store.load_messages(1, limit=100)
    assert [m.created_at for m in loaded] == [t.astimezone(UTC) for t in times]
    assert loaded == sent


@pytest_twisted.ensureDeferred
async def test_unencodable_text_is_rejected_and_stores_nothing(database: TestDatabase) -> None:
    """A lone surrogate cannot be encoded for either database: the batch is rejected whole,
    whichever text column holds it, and the store goes on working."""
    store = AdbapiChatStore(database.open_pool())
    await migrate(store.pool)
    good = chat_message(1, 1)
    bad_texts = [
        chat_message(1, 2, text="half \ud800 a pair"),
        replace(chat_message(1, 2), message_id="id \udfff"),
        replace(chat_message(1, 2), type="\ud83d"),
    ]
    for bad in bad_texts:
        with pytest.raises(MessagesRejected):
            await store.save_messages([good, bad])
    assert await store.load_messages(1, limit=10) == []
    await store.save_messages([good])
    assert await store.load_messages(1, limit=10) == [good]


@pytest_twisted.ensureDeferred
async def test_nul_characters(database: TestDatabase) -> None:
    """PostgreSQL text cannot hold NUL, in any column: the batch is rejected whole before it
    is sent. SQLite stores NUL like any other character."""
    store = AdbapiChatStore(database.open_pool())
    await migrate(store.pool)
    with_nul = [
        chat_message(1, 1, text="nul \x00 inside"),
        replace(chat_message(1, 2), message_id="\x00"),
        replace(chat_message(1, 3), type="TALK\x00"),
    ]
    if database.dialect == "postgresql":
        for message in with_nul:
            with pytest.raises(MessagesRejected, match="NUL"):
                await store.save_messages([chat_message(1, 9), message])
        assert await store.load_messages(1, limit=10) == []
    else:
        await store.save_messages(with_nul)
        assert await store.load_messages(1, limit=10) == with_nul


@pytest_twisted.ensureDeferred
async def test_a_naive_time_is_rejected(database: TestDatabase) -> None:
    """A message whose time lost its zone (built around ChatMessage's check) is refused
    as MessagesRejected, with nothing stored."""
    store = AdbapiChatStore(database.open_pool())
    await migrate(store.pool)
    naive = chat_message(1, 2)
    object.__setattr__(naive, "created_at", datetime(2024, 5, 1, 12, 0))
    with pytest.raises(MessagesRejected, match="naive"):
        await store.save_messages([chat_message(1, 1), naive])
    assert await store.load_messages(1, limit=10) == []


@pytest_twisted.ensureDeferred
async def test_retry_after_a_lost_commit_stores_nothing_twice(
    postgresql_database: TestDatabase,
    postgres_proxy: CuttableProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write-behind writer's retry after a failure whose commit may have gone through:
    the same batch (already stored here by another connection, as if the commit had
    reached the database) is saved again with the new messages, each stored once, with no
    error. After a failure the store skips stored messages from the start, without first
    trying the plain INSERT that would collide."""
    config = postgresql_database.config
    other = AdbapiChatStore(postgresql_database.open_pool())
    await migrate(other.pool)
    batch = [chat_message(room, seq) for seq in range(1, 301) for room in (1, 2)]
    await other.save_messages(batch)

    # One connection, so the one the cut breaks is the one the failed save drops.
    routed = replace(postgres_proxy.route(config), pool_max=1)
    store = AdbapiChatStore(postgresql_database.open_pool(routed))
    await store.last_seq(1)  # connect through the proxy
    postgres_proxy.cut()
    with pytest.raises(store.pool.dbapi.Error):
        await store.save_messages(batch)
    postgres_proxy.restore()

    monkeypatch.setattr(messages_module, "_POSTGRES_INSERT_NEW_MESSAGES", "SELECT 1 / 0")
    retried = [*batch, chat_message(1, 301), chat_message(3, 1)]
    await store.save_messages(retried)
    assert postgresql_database.query("SELECT COUNT(*) FROM messages") == [(len(batch) + 2,)]
    assert await store.load_messages(1, limit=1000) == [chat_message(1, s) for s in range(1, 302)]
    assert await store.load_messages(3, limit=10) == [chat_message(3, 1)]


@pytest_twisted.ensureDeferred
async def test_rejected_batch_stores_nothing(database: TestDatabase) -> None:
    """A batch holding one value the database cannot store fails as MessagesRejected and
    stores none of its messages (one transaction)."""
    store = AdbapiChatStore(database.open_pool())
    await migrate(store.pool)
    good = chat_message(1, 1)
    unstorable = [replace(chat_message(1, 2), seq=2**70)]
    if database.dialect == "postgresql":
        unstorable.append(chat_message(1, 3, text="nul \x00 inside"))
    for bad in unstorable:
        with pytest.raises(MessagesRejected):
            await store.save_messages([good, bad])
    assert await store.load_messages(1, limit=10) == []
    await store.save_messages([good])
    assert await store.load_messages(1, limit=10) == [good]


@pytest_twisted.ensureDeferred
async def test_postgres_stores_real_timestamps(postgresql_database: TestDatabase) -> None:
    """On PostgreSQL, times are TIMESTAMPTZ values, usable in SQL by other tools."""
    store = AdbapiChatStore(postgresql_database.open_pool())
    await migrate(store.pool)
    await store.save_messages([chat_message(1, 1)])
    [(type_name, utc_text)] = postgresql_database.query(
        "SELECT pg_typeof(created_at)::text, "
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM messages"
    )
    assert type_name == "timestamp with time zone"
    assert utc_text == "2024-05-01 12:00:00.124456"


@pytest_twisted.ensureDeferred
async def test_a_different_message_under_a_stored_seq_is_reported(store: ChatStore) -> None:
    """Saving a message whose (room, seq) holds a different message stores nothing for it
    and reports it; the rest of the batch is stored, and re-saving a stored message is no
    collision."""
    first = [chat_message(1, 1), chat_message(1, 2)]
    assert await store.save_messages(first) == []
    assert await store.save_messages([chat_message(1, 2), chat_message(1, 3)]) == []
    intruder = chat_message(1, 2, text="another message, same seq", sender_id=9)
    assert await store.save_messages([intruder, chat_message(1, 4)]) == [intruder]
    assert await store.load_messages(1, limit=10) == [chat_message(1, s) for s in range(1, 5)]
