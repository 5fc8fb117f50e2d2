"""Users and tokens: the conformance suite, on every backend."""

from __future__ import annotations

import pytest

from memvault import Conflict, Invalid, Unauthorized, Vault


def test_register_normalises_email_and_refuses_duplicates(vault: Vault) -> None:
    user = vault.users.register("Ada@Example.COM", "password-1", "Ada")
    assert user.email == "ada@example.com" and user.name == "Ada"
    with pytest.raises(Conflict):
        vault.users.register("ada@example.com", "password-2")


@pytest.mark.parametrize(("email", "password", "field"), [
    ("not-an-email", "password-1", "email"),
    ("a@b.co", "short", "password"),
])
def test_register_validates(vault: Vault, email: str, password: str, field: str) -> None:
    with pytest.raises(Invalid) as info:
        vault.users.register(email, password)
    assert info.value.field == field


def test_login_issues_tokens_that_authenticate_until_logout(vault: Vault) -> None:
    user = vault.users.register("b@example.com", "password-1")
    token = vault.users.login("B@example.com", "password-1")
    assert vault.users.authenticate(token.access_token).id == user.id
    vault.users.logout(token.access_token)
    with pytest.raises(Unauthorized):
        vault.users.authenticate(token.access_token)


def test_wrong_password_and_unknown_email_are_the_same_error(vault: Vault) -> None:
    vault.users.register("c@example.com", "password-1")
    with pytest.raises(Unauthorized) as wrong:
        vault.users.login("c@example.com", "password-2")
    with pytest.raises(Unauthorized) as unknown:
        vault.users.login("nobody@example.com", "password-1")
    assert wrong.value.detail == unknown.value.detail


def test_tokens_are_stored_hashed_and_passwords_with_argon2(vault: Vault) -> None:
    import sqlalchemy as sa

    from memvault.backends.schema import auth_tokens, users

    vault.users.register("d@example.com", "password-1")
    token = vault.users.login("d@example.com", "password-1").access_token
    with vault.db.read() as conn:
        stored = conn.execute(sa.select(auth_tokens.c.token_hash)).scalars().all()
        pw = conn.execute(sa.select(users.c.password_hash)).scalar_one()
    assert token not in stored and len(stored) == 1
    assert pw.startswith("$argon2id$")


def test_tokens_survive_reopening(settings, vault: Vault) -> None:  # type: ignore[no-untyped-def]
    import memvault

    vault.users.register("e@example.com", "password-1")
    token = vault.users.login("e@example.com", "password-1").access_token
    vault.close()
    with memvault.open(settings) as again:
        assert again.users.authenticate(token).email == "e@example.com"


def test_expired_tokens_are_refused(vault: Vault) -> None:
    from datetime import timedelta

    from memvault.backends.schema import auth_tokens
    from memvault.ids import utcnow

    vault.users.register("f@example.com", "password-1")
    token = vault.users.login("f@example.com", "password-1").access_token
    with vault.db.write() as conn:
        conn.execute(auth_tokens.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(Unauthorized):
        vault.users.authenticate(token)


def test_vector_extension_is_enabled_when_offered(vault: Vault) -> None:
    import sqlalchemy as sa

    from memvault import ConfigError

    if vault.backend == "sqlite":  # keeps vectors itself: nothing to require
        vault.require_vector("retrieval")
        return
    with vault.db.read() as conn:
        offered = conn.execute(sa.text(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is not None
    assert vault.facts["pgvector"] is offered
    if offered:
        vault.require_vector("retrieval")
    else:
        with pytest.raises(ConfigError, match="pgvector"):
            vault.require_vector("retrieval")
