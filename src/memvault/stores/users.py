"""Users and bearer tokens.

Passwords are hashed with argon2; tokens are random, handed out once and stored
only as their sha256, so a copy of the database grants no access.

Hardening kept here, beside the code it guards (the service only passes the
client address along):

- at most ``max_concurrent_hashes`` argon2 computations run at once per vault
  (each takes the profile's memory, 64 MiB by default); a caller that gets no
  slot within ``hash_wait_ms`` is refused with ``Unavailable`` and a retry hint;
- failed logins are counted per account and per client address in the
  ``auth_failures`` table (fixed windows, shared by every worker and replica);
  past a threshold the key is locked until its window ends, checked before any
  hashing, so a locked key costs one indexed read;
- hashes imported from seed 001 are bcrypt (``$2a$``/``$2b$``/``$2y$``): they are
  verified with bcrypt (under the same slots) and replaced by an argon2 hash at
  the first successful login;
- the ``memvault.invalid`` domain is reserved for the built-in local user.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import bcrypt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..backends.base import Database
from ..backends.schema import UTCDateTime, auth_failures, auth_tokens, users
from ..errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized, Unavailable
from ..ids import new_id, utcnow
from ..models import Token, User
from ..settings import Settings
from ._text import check_text

__all__ = ["UserStore", "LOCAL_USER_EMAIL", "RESERVED_DOMAIN", "MIN_PASSWORD"]

MIN_PASSWORD = 8
#: Nobody may register an address here: the built-in local user lives in it, and
#: with auth disabled every request acts as that user.
RESERVED_DOMAIN = "memvault.invalid"
LOCAL_USER_EMAIL = f"local@{RESERVED_DOMAIN}"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: argon2 cost profiles: RFC 9106's low-memory choice (argon2-cffi's default), and
#: OWASP's minimum (m=19 MiB, t=2, p=1), which is ~10x cheaper for busy login paths.
HASH_PROFILES = {
    "rfc9106": PasswordHasher(),
    "owasp": PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),
}


#: Prefixes of the bcrypt hashes seed 001 stored (``import-legacy``).
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
#: bcrypt reads at most this many bytes of a password; the seeds' library cut
#: longer ones silently, so the same cut lets those users log in.
_BCRYPT_MAX_BYTES = 72


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _normalise(email: str) -> str:
    return email.strip().lower()


def _failure_key(kind: str, value: str) -> str:
    """``auth_failures.key_hash``: the sha256 of ``account:<email>`` or ``address:<ip>``."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def _is_reserved(email: str) -> bool:
    domain = email.rpartition("@")[2]
    return domain == RESERVED_DOMAIN or domain.endswith("." + RESERVED_DOMAIN)


def _user(row: Any) -> User:
    return User(id=row.id, email=row.email, name=row.name, created_at=row.created_at)


class UserStore:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._ttl = timedelta(hours=settings.token_ttl_hours)
        self._hasher = HASH_PROFILES[settings.password_hash]
        self._dummy: str | None = None
        self._hash_slots = threading.BoundedSemaphore(settings.max_concurrent_hashes)
        self._hash_wait = settings.hash_wait_ms / 1000
        self._max_account = settings.login_max_failures_per_account
        self._max_address = settings.login_max_failures_per_address
        self._window = timedelta(seconds=settings.login_failure_window_s)

    @contextlib.contextmanager
    def _hash_slot(self) -> Iterator[None]:
        """One of the few argon2 slots, or ``Unavailable`` when none frees up in time."""
        if not self._hash_slots.acquire(timeout=self._hash_wait):
            raise Unavailable("too many password checks in progress; retry shortly",
                              retry_after=1)
        try:
            yield
        finally:
            self._hash_slots.release()

    def _hash(self, password: str) -> str:
        with self._hash_slot():
            return self._hasher.hash(password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        with self._hash_slot():
            if password_hash is None:
                # Verified against when the email is unknown, so both failures cost the same.
                if self._dummy is None:
                    self._dummy = self._hasher.hash("memvault-dummy-password")
                password_hash = self._dummy
            if password_hash.startswith(BCRYPT_PREFIXES):
                try:
                    return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX_BYTES],
                                          password_hash.encode())
                except ValueError:  # a malformed hash: no password matches it
                    return False
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def _rehash(self, user_id: str, old_hash: str, password: str) -> None:
        """Replace ``old_hash`` by an argon2 hash of ``password`` (just verified).
        Conditional on the stored hash being unchanged: a concurrent login that
        rehashed first, or a password change, wins."""
        new_hash = self._hash(password)
        with self._db.write() as conn:
            conn.execute(users.update().where(users.c.id == user_id,
                                              users.c.password_hash == old_hash)
                         .values(password_hash=new_hash))

    def register(self, email: str, password: str, name: str | None = None) -> User:
        """Create a user.

        Raises:
            Invalid: malformed or reserved (``@memvault.invalid``) email, or a
                password under 8 characters.
            Conflict: the email (case-insensitive) is taken.
            Unavailable: too many passwords are being hashed at once (retry later).
        """
        email = _normalise(check_text(email, "email"))
        if not _EMAIL.match(email) or len(email) > 320:
            raise Invalid("malformed email address", field="email")
        if name is not None:  # NUL: one refusal on every backend (issue 10)
            check_text(name, "name")
        if _is_reserved(email):
            raise Invalid(f"addresses in {RESERVED_DOMAIN} are reserved", field="email")
        if len(password) < MIN_PASSWORD:
            raise Invalid(f"password must have at least {MIN_PASSWORD} characters",
                          field="password")
        return self._create(email, password, name)

    def _create(self, email: str, password: str, name: str | None) -> User:
        user = User(id=new_id(), email=email, name=name, created_at=utcnow())
        row = {**user.model_dump(), "password_hash": self._hash(password)}
        try:
            with self._db.write() as conn:
                conn.execute(users.insert(), row)
        except Conflict:
            raise Conflict("a user with this email already exists") from None
        return user

    def find(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or ``None``."""
        email = _normalise(check_text(email, "email"))
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.email == email)).first()
        return _user(row) if row else None

    def import_user(self, user_id: str, email: str, password_hash: str, name: str | None,
                    created_at: datetime) -> tuple[User, bool]:
        """Create an account carried over from a seed's data (``import-legacy``),
        keeping its id, creation time and password hash: a bcrypt hash lets the
        user log in with their old password, rehashed to argon2 at that login.

        Returns:
            The account, and whether it was created now. An account with this
            email that already exists is returned as it is (nothing changes).

        Raises:
            Invalid: a malformed or reserved email, or a password hash that is
                neither bcrypt nor argon2 (nobody could ever log in with it).
        """
        email = _normalise(check_text(email, "email"))
        if not _EMAIL.match(email) or len(email) > 320 or _is_reserved(email):
            raise Invalid("malformed or reserved email address", field="email")
        if name is not None:
            check_text(name, "name")
        if not (password_hash.startswith(BCRYPT_PREFIXES) or password_hash.startswith("$argon2")):
            raise Invalid("password hash is neither bcrypt nor argon2", field="password_hash")
        check_text(password_hash, "password_hash")
        user = User(id=user_id, email=email, name=name, created_at=created_at)
        existing = self.find(email)
        if existing is not None:
            return existing, False
        try:
            with self._db.write() as conn:
                conn.execute(users.insert(), {**user.model_dump(), "password_hash": password_hash})
        except Conflict:  # created meanwhile (same email), or the id is taken
            existing = self.find(email)
            if existing is None:
                raise
            return existing, False
        return user, True

    def ensure_local_user(self) -> User:
        """The built-in user every request acts as when auth is disabled."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.email == LOCAL_USER_EMAIL)).first()
        if row:
            return _user(row)
        try:
            # Past the reserved-domain check; the random password is never handed out.
            return self._create(LOCAL_USER_EMAIL, secrets.token_urlsafe(32), "local")
        except Conflict:  # another worker created it first
            return self.ensure_local_user()

    def get(self, user_id: str) -> User:
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        if row is None:
            raise NotFound("no such user")
        return _user(row)

    def login(self, email: str, password: str, client: str | None = None) -> Token:
        """Check credentials and issue a bearer token.

        Args:
            client: the caller's network address, when known: failed logins are
                also limited per address.

        Raises:
            Unauthorized: unknown email or wrong password (the same answer).
            TooManyRequests: too many recent failures for this account or address;
                even the right password is refused until ``retry_after`` seconds pass.
            Unavailable: too many passwords are being checked at once (retry later).
        """
        email = _normalise(check_text(email, "email"))  # NUL: one answer on every backend
        account = _failure_key("account", email)
        limits = {account: self._max_account}
        if client:
            limits[_failure_key("address", client)] = self._max_address
        self._refuse_locked(limits)
        with self._db.read() as conn:
            row = conn.execute(sa.select(users.c.id, users.c.password_hash)
                               .where(users.c.email == email)).first()
        matches = self._verify(row.password_hash if row else None, password)
        if row is None or not matches:
            self._record_failure(list(limits))
            raise Unauthorized("invalid email or password")
        if row.password_hash.startswith(BCRYPT_PREFIXES):  # imported: now argon2
            self._rehash(row.id, row.password_hash, password)
        return self._issue(row.id, clear=account)

    def _refuse_locked(self, limits: dict[str, int]) -> None:
        now = utcnow()
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(auth_failures.c.window_start, auth_failures.c.failures,
                          auth_failures.c.key_hash)
                .where(auth_failures.c.key_hash.in_(list(limits)),
                       auth_failures.c.window_start > now - self._window)).all()
        ends = [r.window_start + self._window for r in rows if r.failures >= limits[r.key_hash]]
        if ends:
            wait = math.ceil((max(ends) - now).total_seconds())
            raise TooManyRequests("too many failed logins; try again later",
                                  retry_after=max(1, wait))

    def _record_failure(self, keys: list[str]) -> None:
        """Count one failure against each key, in fixed windows, and prune ended windows.

        Keys are locked in the order given (the account, then the address), the
        same in every transaction, so concurrent failures cannot deadlock.
        """
        now = utcnow()
        cutoff = sa.literal(now - self._window, UTCDateTime)
        ended = auth_failures.c.window_start <= cutoff
        backend = self._db.backend
        with self._db.write() as conn:
            for key in keys:
                conn.execute(backend.upsert(
                    auth_failures, {"key_hash": key, "window_start": now, "failures": 1},
                    ["key_hash"],
                    {"failures": sa.case((ended, 1), else_=auth_failures.c.failures + 1),
                     "window_start": sa.case((ended, sa.literal(now, UTCDateTime)),
                                             else_=auth_failures.c.window_start)}))
            # The table holds only live windows. Rows another transaction holds are
            # left for the next prune rather than waited for.
            stale = sa.select(auth_failures.c.key_hash).where(ended)
            if backend.skip_locked:
                stale = stale.with_for_update(skip_locked=True)
            conn.execute(auth_failures.delete().where(auth_failures.c.key_hash.in_(stale)))

    def issue_token(self, user_id: str) -> Token:
        return self._issue(user_id)

    def _issue(self, user_id: str, clear: str | None = None) -> Token:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + self._ttl
        with self._db.write() as conn:
            conn.execute(auth_tokens.insert().values(
                token_hash=_token_hash(token), user_id=user_id, created_at=now,
                expires_at=expires))
            # Expired tokens are pruned as new ones are issued: the table stays small.
            conn.execute(auth_tokens.delete().where(auth_tokens.c.user_id == user_id,
                                                    auth_tokens.c.expires_at < now))
            if clear is not None:  # a successful login forgives the account's failures
                conn.execute(auth_failures.delete().where(auth_failures.c.key_hash == clear))
        return Token(access_token=token, expires_at=expires)

    def authenticate(self, token: str) -> User:
        """The user a live bearer token belongs to.

        Raises:
            Unauthorized: unknown, revoked or expired token.
        """
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(users).join(auth_tokens, auth_tokens.c.user_id == users.c.id)
                .where(auth_tokens.c.token_hash == _token_hash(token),
                       auth_tokens.c.expires_at > utcnow())).first()
        if row is None:
            raise Unauthorized("invalid or expired token")
        return _user(row)

    def logout(self, token: str) -> None:
        with self._db.write() as conn:
            conn.execute(auth_tokens.delete().where(auth_tokens.c.token_hash == _token_hash(token)))

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())
