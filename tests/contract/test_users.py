"""Users and tokens: the conformance suite, on every backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


# --- hardening (issue 10, fault 10) -------------------------------------------------

@pytest.mark.parametrize("email", ["local@memvault.invalid", "LOCAL@Memvault.Invalid",
                                   "someone@memvault.invalid", "x@sub.memvault.invalid"])
def test_the_local_users_domain_is_reserved(vault: Vault, email: str) -> None:
    with pytest.raises(Invalid) as info:
        vault.users.register(email, "password-1")
    assert info.value.field == "email"


def test_the_local_user_is_created_internally_and_cannot_log_in(vault: Vault) -> None:
    from memvault.stores.users import LOCAL_USER_EMAIL

    local = vault.users.ensure_local_user()
    assert local.email == LOCAL_USER_EMAIL and vault.users.ensure_local_user().id == local.id
    with pytest.raises(Unauthorized):
        vault.users.login(LOCAL_USER_EMAIL, "password-1")


def _failures(vault: Vault) -> dict[str, tuple[int, object]]:
    import sqlalchemy as sa

    from memvault.backends.schema import auth_failures

    with vault.db.read() as conn:
        return {r.key_hash: (r.failures, r.window_start)
                for r in conn.execute(sa.select(auth_failures))}


def _key(kind: str, value: str) -> str:
    import hashlib

    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


@pytest.fixture
def strict(settings) -> Iterator[Vault]:  # type: ignore[no-untyped-def]
    """A vault locking an account after 3 failures and an address after 5."""
    import memvault

    with memvault.open(settings, login_max_failures_per_account=3,
                       login_max_failures_per_address=5, login_failure_window_s=600) as v:
        yield v


def test_failed_logins_lock_the_account_even_for_the_right_password(strict: Vault) -> None:
    from memvault import TooManyRequests

    strict.users.register("g@example.com", "password-1")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            strict.users.login("G@example.com ", "wrong-password")
    assert _failures(strict)[_key("account", "g@example.com")][0] == 3
    with pytest.raises(TooManyRequests) as info:
        strict.users.login("g@example.com", "password-1")
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 600
    # A locked key is refused before any hashing: no slot is needed.
    with _all_hash_slots_taken(strict), pytest.raises(TooManyRequests):
        strict.users.login("g@example.com", "password-1")


def test_unknown_emails_count_like_known_ones(strict: Vault) -> None:
    from memvault import TooManyRequests

    for _ in range(3):
        with pytest.raises(Unauthorized):
            strict.users.login("nobody@example.com", "wrong-password")
    with pytest.raises(TooManyRequests):
        strict.users.login("nobody@example.com", "wrong-password")


def test_a_window_ends_and_a_success_clears_the_accounts_failures(strict: Vault) -> None:
    from datetime import timedelta

    from memvault.backends.schema import auth_failures
    from memvault.ids import utcnow

    strict.users.register("h@example.com", "password-1")
    account = _key("account", "h@example.com")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            strict.users.login("h@example.com", "wrong-password", client="192.0.2.7")
    with strict.db.write() as conn:  # the fixed window ends
        conn.execute(auth_failures.update().values(
            window_start=utcnow() - timedelta(seconds=601)))
    with pytest.raises(Unauthorized):  # counted in a fresh window (and old rows pruned)
        strict.users.login("h@example.com", "wrong-password", client="192.0.2.7")
    assert _failures(strict)[account][0] == 1
    assert _failures(strict)[_key("address", "192.0.2.7")][0] == 1
    strict.users.login("h@example.com", "password-1", client="192.0.2.7")
    left = _failures(strict)
    assert account not in left and _key("address", "192.0.2.7") in left


def test_failed_logins_lock_the_client_address(strict: Vault) -> None:
    from memvault import TooManyRequests

    strict.users.register("i@example.com", "password-1")
    for n in range(5):  # different accounts, one address
        with pytest.raises(Unauthorized):
            strict.users.login(f"guess{n}@example.com", "wrong-password", client="198.51.100.9")
    with pytest.raises(TooManyRequests):
        strict.users.login("i@example.com", "password-1", client="198.51.100.9")
    assert strict.users.login("i@example.com", "password-1", client="198.51.100.10")
    assert strict.users.login("i@example.com", "password-1")  # no address known


def test_failure_counts_are_shared_by_every_vault_on_the_database(
        settings, strict: Vault) -> None:  # type: ignore[no-untyped-def]
    import memvault
    from memvault import TooManyRequests

    strict.users.register("j@example.com", "password-1")
    with memvault.open(settings, login_max_failures_per_account=3) as other:
        for v in (strict, other, strict):  # as if served by two workers
            with pytest.raises(Unauthorized):
                v.users.login("j@example.com", "wrong-password")
        with pytest.raises(TooManyRequests):
            other.users.login("j@example.com", "password-1")


@contextlib.contextmanager
def _all_hash_slots_taken(vault: Vault) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for _ in range(vault.settings.max_concurrent_hashes):
            stack.enter_context(vault.users._hash_slot())
        yield


def test_password_hashing_is_capped(settings) -> None:  # type: ignore[no-untyped-def]
    import memvault
    from memvault import Unavailable

    with memvault.open(settings, max_concurrent_hashes=2, hash_wait_ms=0) as v:
        v.users.register("k@example.com", "password-1")
        with _all_hash_slots_taken(v):
            with pytest.raises(Unavailable) as info:
                v.users.register("l@example.com", "password-1")
            assert info.value.retry_after == 1
            with pytest.raises(Unavailable):
                v.users.login("k@example.com", "password-1")
        assert not _failures(v)  # refusing for capacity is not a failed login
        assert v.users.login("k@example.com", "password-1")
        assert v.users.register("l@example.com", "password-1")
