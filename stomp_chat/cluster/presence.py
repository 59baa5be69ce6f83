"""Presence across the cluster: who is in each room on any server, per user.

Each server writes, for every room and user it holds sessions of, its own
session count into the room's hash in Redis (``{ns}:presence:{room}``, a
field per user: name, arrival time and a count per server). A user joins
when their first server appears there and leaves when their last one goes,
so tabs on several servers are one person. The script that changes a
count answers the event (join, leave or none) and the room's whole list,
atomically, and the server that made the change publishes the event.

A server proves it is alive with a key that expires after ``ttl`` seconds
and is refreshed every ``ttl / 3``. Every server, on the same beat, reaps
servers whose key expired: their counts are removed and the users who were
only there leave. A server killed without cleaning up is therefore gone
from every room within ``ttl`` plus one beat (``4 * ttl / 3``).

While Redis is unreachable a server announces what it sees itself; once
the commands link is back it writes its counts again, so Redis agrees with
the sessions it holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

DEFAULT_PRESENCE_TTL = 15.0

#: KEYS: the room's hash, this server's rooms, the servers' set. ARGV: room id,
#: user key, user name, server id, the server's session count (0: gone).
#: Answers the event ('join', 'leave' or '') and the room's hash as a flat list.
_CHANGE = """
local raw = redis.call('HGET', KEYS[1], ARGV[2])
local entry
if raw then
  entry = cjson.decode(raw)
else
  entry = {name = ARGV[3], since = tonumber(redis.call('TIME')[1]), nodes = {}}
end
local before = next(entry.nodes) ~= nil
local count = tonumber(ARGV[5])
if count > 0 then
  entry.nodes[ARGV[4]] = count
  entry.name = ARGV[3]
else
  entry.nodes[ARGV[4]] = nil
end
local after = next(entry.nodes) ~= nil
if after then
  redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(entry))
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
if count > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[4])
end
local event = ''
if after and not before then event = 'join' elseif before and not after then event = 'leave' end
return {event, redis.call('HGETALL', KEYS[1])}
"""

#: KEYS: the servers' set. ARGV: the namespace prefix ('{ns}:'). Removes the
#: counts of every server whose alive key expired; answers, as JSON, the
#: users who left: [[room, user key, name], ...].
_REAP = """
local leaves = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    local rooms_key = ARGV[1] .. 'node-rooms:' .. node
    for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local hash = ARGV[1] .. 'presence:' .. room
      local fields = redis.call('HGETALL', hash)
      for i = 1, #fields, 2 do
        local entry = cjson.decode(fields[i + 1])
        if entry.nodes[node] then
          entry.nodes[node] = nil
          if next(entry.nodes) == nil then
            redis.call('HDEL', hash, fields[i])
            leaves[#leaves + 1] = {room, fields[i], entry.name}
          else
            redis.call('HSET', hash, fields[i], cjson.encode(entry))
          end
        end
      end
    end
    redis.call('DEL', rooms_key)
    redis.call('SREM', KEYS[1], node)
  end
end
if #leaves == 0 then return '[]' end
return cjson.encode(leaves)
"""

#: What a server announces: (room id, 'join' or 'leave', user key, user name, users).
Announce = Callable[[int, str, str, str, list[dict[str, Any]]], object]


def users_of(flat: list[Any]) -> list[dict[str, Any]]:
    """A room's hash (flat HGETALL) as the users list, in order of arrival."""
    people = []
    for i in range(0, len(flat) - 1, 2):
        key = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
        try:
            entry = json.loads(flat[i + 1])
            nodes = entry["nodes"] if isinstance(entry["nodes"], dict) else {}
            sessions = sum(int(n) for n in nodes.values())
            people.append((entry.get("since", 0), key, str(entry["name"]), sessions))
        except (ValueError, KeyError, TypeError):
            continue
    people.sort()
    return [{"id": key, "name": name, "sessions": sessions}
            for _, key, name, sessions in people]


class ClusterPresence(Service):
    """One server's part of the cluster's presence, on the relay's commands link."""

    def __init__(self, relay: Any, clock: Any, ttl: float = DEFAULT_PRESENCE_TTL) -> None:
        self.relay = relay
        self.clock = clock
        self.ttl = ttl
        self.node_id = relay.node_id
        prefix = relay.channel_prefix
        self.prefix = prefix
        self.nodes_key = f"{prefix}nodes"
        self.alive_key = f"{prefix}node:{self.node_id}"
        self.rooms_key = f"{prefix}node-rooms:{self.node_id}"
        #: Told of every leave the reaping finds (a dead server's users).
        self.announce: Announce | None = None
        #: This server's counts as last meant for Redis: (room, user) -> (name, count).
        self.counts: dict[tuple[int, str], tuple[str, int]] = {}
        self._beat = LoopingCall(self.beat)
        self._beat.clock = clock

    def startService(self) -> None:
        super().startService()
        self._beat.start(self.ttl / 3, now=True).addErrback(
            lambda failure: log.failure("the presence beat stopped", failure)
        )
        self.relay.up_listeners.append(self.resync)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._beat.running:
            self._beat.stop()
        if self.resync in self.relay.up_listeners:
            self.relay.up_listeners.remove(self.resync)
        return succeed(None)

    def _redis(self) -> Any:
        return self.relay.commands()

    def beat(self) -> Deferred[Any] | None:
        """Refresh this server's alive key, then reap the servers whose key expired."""
        if not self.relay.connected:
            return None
        redis = self._redis()
        d = redis.set(self.alive_key, "1", expire=None, pexpire=int(self.ttl * 1000))
        d.addCallback(lambda _: redis.sadd(self.nodes_key, self.node_id))
        d.addCallback(lambda _: redis.eval(_REAP, [self.nodes_key], [self.prefix]))
        d.addCallback(self._reaped)
        d.addErrback(lambda failure: log.warn("presence beat failed: {error}",
                                              error=failure.getErrorMessage()))
        return d

    def _reaped(self, answer: Any) -> None:
        leaves = json.loads(answer)
        for room, user_key, name in leaves:
            room_id = int(room)
            log.info("user {user} left room {room} with a server that stopped answering",
                     user=user_key, room=room_id)
            self.users(room_id).addCallbacks(
                self._tell_leave, lambda failure: None, callbackArgs=(room_id, user_key, name)
            )

    def _tell_leave(self, users: list[dict[str, Any]], room_id: int, user_key: str,
                    name: str) -> None:
        self._tell(room_id, "leave", user_key, name, users)

    def _tell(self, room_id: int, kind: str, user_key: str, name: str,
              users: list[dict[str, Any]]) -> None:
        if self.announce is not None:
            self.announce(room_id, kind, user_key, name, users)

    def change(self, room_id: int, user_key: str, name: str,
               count: int) -> Deferred[tuple[str, list[dict[str, Any]]]]:
        """This server now holds ``count`` sessions of the user in the room; answers the
        cluster-wide event ('join', 'leave' or '') and the room's users."""
        if count > 0:
            self.counts[(room_id, user_key)] = (name, count)
        else:
            self.counts.pop((room_id, user_key), None)
        if not self.relay.connected:
            return fail(ConnectionError("Redis is unreachable"))
        keys = [f"{self.prefix}presence:{room_id}", self.rooms_key, self.nodes_key]
        d = self._redis().eval(_CHANGE, keys, [room_id, user_key, name, self.node_id, count])
        return d.addCallback(lambda answer: (_text(answer[0]), users_of(answer[1])))

    def users(self, room_id: int) -> Deferred[list[dict[str, Any]]]:
        if not self.relay.connected:
            return fail(ConnectionError("Redis is unreachable"))
        d = self._redis().hgetall(f"{self.prefix}presence:{room_id}")
        return d.addCallback(_flatten).addCallback(users_of)

    def resync(self) -> None:
        """The commands link is back: write this server's counts again (Redis may have
        restarted, or reaped this server while it could not refresh its key)."""
        self.beat()
        for (room_id, user_key), (name, count) in list(self.counts.items()):
            self.change(room_id, user_key, name, count).addCallbacks(
                lambda answer, r=room_id, u=user_key, n=name: (
                    self._tell(r, answer[0], u, n, answer[1]) if answer[0] else None
                ),
                lambda failure: None,
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flatten(reply: Any) -> list[Any]:
    """HGETALL as a flat list, whether the client answered a dict or a list."""
    if isinstance(reply, dict):
        flat: list[Any] = []
        for key, value in reply.items():
            flat += [key, value]
        return flat
    return list(reply)
