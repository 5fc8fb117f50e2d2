"""Users and bearer tokens.

Passwords are hashed with argon2; tokens are random, handed out once and stored
only as their sha256, so a copy of the database grants no access.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..backends.base import Database
from ..backends.schema import auth_tokens, users
from ..errors import Conflict, Invalid, NotFound, Unauthorized
from ..ids import new_id, utcnow
from ..models import Token, User

__all__ = ["UserStore", "LOCAL_USER_EMAIL", "MIN_PASSWORD"]

MIN_PASSWORD = 8
LOCAL_USER_EMAIL = "local@memvault.invalid"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: argon2 cost profiles: RFC 9106's low-memory choice (argon2-cffi's default), and
#: OWASP's minimum (m=19 MiB, t=2, p=1), which is ~10x cheaper for busy login paths.
HASH_PROFILES = {
    "rfc9106": PasswordHasher(),
    "owasp": PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),
}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(id=row.id, email=row.email, name=row.name, created_at=row.created_at)


class UserStore:
    def __init__(self, db: Database, token_ttl_hours: int, hash_profile: str = "rfc9106") -> None:
        self._db = db
        self._ttl = timedelta(hours=token_ttl_hours)
        self._hasher = HASH_PROFILES[hash_profile]
        self._dummy: str | None = None

    @property
    def _dummy_hash(self) -> str:
        """Verified against when the email is unknown, so both failures cost the same."""
        if self._dummy is None:
            self._dummy = self._hasher.hash("memvault-dummy-password")
        return self._dummy

    def register(self, email: str, password: str, name: str | None = None) -> User:
        """Create a user.

        Raises:
            Invalid: malformed email or a password under 8 characters.
            Conflict: the email (case-insensitive) is taken.
        """
        email = email.strip().lower()
        if not _EMAIL.match(email) or len(email) > 320:
            raise Invalid("malformed email address", field="email")
        if len(password) < MIN_PASSWORD:
            raise Invalid(f"password must have at least {MIN_PASSWORD} characters",
                          field="password")
        user = User(id=new_id(), email=email, name=name, created_at=utcnow())
        row = {**user.model_dump(), "password_hash": self._hasher.hash(password)}
        try:
            with self._db.write() as conn:
                conn.execute(users.insert(), row)
        except Conflict:
            raise Conflict("a user with this email already exists") from None
        return user

    def ensure_local_user(self) -> User:
        """The built-in user every request acts as when auth is disabled."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.email == LOCAL_USER_EMAIL)).first()
        if row:
            return _user(row)
        try:
            return self.register(LOCAL_USER_EMAIL, secrets.token_urlsafe(32), "local")
        except Conflict:  # another worker created it first
            return self.ensure_local_user()

    def get(self, user_id: str) -> User:
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        if row is None:
            raise NotFound("no such user")
        return _user(row)

    def login(self, email: str, password: str) -> Token:
        """Check credentials and issue a bearer token.

        Raises:
            Unauthorized: unknown email or wrong password (the same answer).
        """
        with self._db.read() as conn:
            row = conn.execute(sa.select(users.c.id, users.c.password_hash)
                               .where(users.c.email == email.strip().lower())).first()
        try:
            self._hasher.verify(row.password_hash if row else self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            row = None
        if row is None:
            raise Unauthorized("invalid email or password")
        return self.issue_token(row.id)

    def issue_token(self, user_id: str) -> Token:
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
