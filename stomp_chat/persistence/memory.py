"""`ChatStore` in dictionaries: the in-memory twin of the database store.

For tests of the layers above and a database-less demo mode. It answers with
already-fired Deferreds and keeps the same contract as `AdbapiChatStore`, which every
store test checks on both; it shares the database store's rules (default names, argument
checks) so the two cannot drift apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from stomp_chat.persistence.history import check_history_arguments
from stomp_chat.persistence.members import (
    MemberNameTaken,
    MemberNotFound,
    check_member_name,
    member_name_candidates,
)
from stomp_chat.persistence.model import ChatMessage, Member, Room
from stomp_chat.persistence.reservations import check_reservation_count
from stomp_chat.persistence.rooms import RoomAlreadyExists, RoomNotFound, default_room_name


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryChatStore:
    """`ChatStore` in dictionaries, answering with already-fired Deferreds."""

    def __init__(self, now: Callable[[], datetime] = _utc_now) -> None:
        self._now = now
        self._rooms: dict[int, Room] = {}
        self._members: dict[int, Member] = {}
        self._members_by_name: dict[str, Member] = {}
        self._password_hashes: dict[int, str | None] = {}
        self._memberships: dict[int, dict[int, datetime]] = {}
        self._messages: dict[int, dict[int, ChatMessage]] = {}
        self._sorted_seqs: dict[int, list[int]] = {}
        self._reservations: dict[int, int] = {}
        #: How many times save_messages was called (tests of batching read it).
        self.save_calls = 0

    def _next_id(self, table: dict[int, Any]) -> int:
        return max(table, default=0) + 1

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        if room_id is None:
            room_id = self._next_id(self._rooms)
        elif room_id in self._rooms:
            return fail(RoomAlreadyExists(room_id))
        room = Room(room_id, name, self._now().astimezone(UTC))
        self._rooms[room_id] = room
        return succeed(room)

    def get_room(self, room_id: int) -> Deferred[Room | None]:
        return succeed(self._rooms.get(room_id))

    def list_rooms(self) -> Deferred[list[Room]]:
        return succeed([self._rooms[room_id] for room_id in sorted(self._rooms)])

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        return succeed(self._ensure_room(room_id))

    def _ensure_room(self, room_id: int) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = Room(room_id, default_room_name(room_id), self._now().astimezone(UTC))
            self._rooms[room_id] = room
        return room

    def _add_member(self, member: Member, password_hash: str | None) -> Member:
        self._members[member.id] = member
        self._members_by_name[member.name] = member
        self._password_hashes[member.id] = password_hash
        return member

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        check_member_name(name)
        if name in self._members_by_name:
            return fail(MemberNameTaken(name))
        member = Member(self._next_id(self._members), name, self._now().astimezone(UTC))
        return succeed(self._add_member(member, password_hash))

    def get_member(self, member_id: int) -> Deferred[Member | None]:
        return succeed(self._members.get(member_id))

    def get_member_by_name(self, name: str) -> Deferred[Member | None]:
        return succeed(self._members_by_name.get(name))

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        member = self._members_by_name.get(name)
        if member is None:
            return succeed(None)
        return succeed((member, self._password_hashes[member.id]))

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        member = self._members.get(member_id)
        if member is not None:
            return succeed(member)
        name = next(n for n in member_name_candidates(member_id) if n not in self._members_by_name)
        member = Member(member_id, name, self._now().astimezone(UTC))
        return succeed(self._add_member(member, None))

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        if room_id not in self._rooms:
            return fail(RoomNotFound(room_id))
        if member_id not in self._members:
            return fail(MemberNotFound(member_id))
        members = self._memberships.setdefault(room_id, {})
        if member_id in members:
            return succeed(False)
        members[member_id] = self._now()
        return succeed(True)

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        members = self._memberships.get(room_id, {})
        return succeed(members.pop(member_id, None) is not None)

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        joined = self._memberships.get(room_id, {})
        order = sorted(joined, key=lambda member_id: (joined[member_id], member_id))
        return succeed([self._members[member_id] for member_id in order])

    def last_seq(self, room_id: int) -> Deferred[int]:
        seqs = self._sorted_seqs.get(room_id)
        return succeed(seqs[-1] if seqs else 0)

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        deleted = 0
        for room_id, seqs in self._sorted_seqs.items():
            room_messages = self._messages[room_id]
            for seq in list(seqs[:-1]):
                if deleted >= limit:
                    return succeed(deleted)
                if room_messages[seq].created_at < cutoff:
                    del room_messages[seq]
                    seqs.remove(seq)
                    deleted += 1
        return succeed(deleted)

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        room_messages = self._messages.get(room_id, {})
        if seq not in room_messages:
            return succeed(False)
        del room_messages[seq]
        self._sorted_seqs[room_id].remove(seq)
        self._reservations[room_id] = max(self._reservations.get(room_id, 0), seq)
        return succeed(True)

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        self.save_calls += 1
        collided = []
        for message in messages:
            room_messages = self._messages.setdefault(message.room_id, {})
            stored = room_messages.get(message.seq)
            if stored is not None:
                if stored != message:
                    collided.append(message)
                continue
            self._ensure_room(message.room_id)
            room_messages[message.seq] = message
            bisect.insort(self._sorted_seqs.setdefault(message.room_id, []), message.seq)
        return succeed(collided)

    def _stored_max(self, room_id: int) -> int:
        seqs = self._sorted_seqs.get(room_id)
        return seqs[-1] if seqs else 0

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        check_reservation_count(count)
        stored = self._stored_max(room_id)
        before = self._reservations.get(room_id, 0)
        through = self._reservations[room_id] = max(stored, before) + count
        return succeed((stored, before, through))

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        reserved = self._reservations[room_id] = max(self._reservations.get(room_id, 0), through)
        return succeed(reserved)

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        if self._reservations.get(room_id) != reserved_through:
            return succeed(False)
        self._reservations[room_id] = last_seq
        return succeed(True)

    def seq_floor(self, room_id: int) -> Deferred[int]:
        return succeed(max(self._stored_max(room_id), self._reservations.get(room_id, 0)))

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        check_history_arguments(limit)
        seqs = self._sorted_seqs.get(room_id, [])
        low = 0 if after_seq is None else bisect.bisect_right(seqs, after_seq)
        high = len(seqs) if before_seq is None else bisect.bisect_left(seqs, before_seq)
        if high <= low or limit == 0:
            return succeed([])
        if after_seq is not None:
            window = seqs[low : min(high, low + limit)]
        else:
            window = seqs[max(low, high - limit) : high]
        room_messages = self._messages[room_id]
        return succeed([room_messages[seq] for seq in window])

    def close(self) -> Deferred[None]:
        return succeed(None)
