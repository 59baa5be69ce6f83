"""Members (persistence/members.py): created by name or from a bare id, found by id and name,
with their credentials; on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

import pytest
import pytest_twisted

from stomp_chat.persistence import ChatStore, MemberNameTaken

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_member_round_trip(store: ChatStore) -> None:
    """A created member is found by id and by name, with its password hash kept apart."""
    alice = await store.create_member("alice", password_hash="$argon2id$abc")
    assert alice.name == "alice"
    assert await store.get_member(alice.id) == alice
    assert await store.get_member_by_name("alice") == alice
    assert await store.get_member_credentials("alice") == (alice, "$argon2id$abc")
    assert await store.get_member_credentials("nobody") is None
    assert await store.get_member(alice.id + 100) is None


@pytest_twisted.ensureDeferred
async def test_member_names_are_unique(store: ChatStore) -> None:
    """A second member with a taken name is refused with MemberNameTaken."""
    await store.create_member("bob")
    with pytest.raises(MemberNameTaken):
        await store.create_member("bob")


@pytest_twisted.ensureDeferred
async def test_ensure_member_names_the_member_after_its_id(store: ChatStore) -> None:
    """A member known only by id is created once, named after the id."""
    created = await store.ensure_member(17)
    assert (created.id, created.name) == (17, "17")
    assert await store.ensure_member(17) == created
    assert await store.get_member_credentials("17") == (created, None)


@pytest_twisted.ensureDeferred
async def test_ensure_member_avoids_a_taken_name(store: ChatStore) -> None:
    """If someone registered the name "8", ensuring member 8 still works under another name."""
    squatter = await store.create_member("8")
    assert squatter.id != 8
    member = await store.ensure_member(8)
    assert member.id == 8 and member.name != "8"
    following = await store.create_member("carol")
    assert following.id not in (8, squatter.id)
