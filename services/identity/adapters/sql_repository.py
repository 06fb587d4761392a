"""AccountStore: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL; the tables are declared with
SQLAlchemy for the migration that creates them. A user id is settled by its key (ON CONFLICT),
a refresh token used once by a conditional UPDATE."""

from __future__ import annotations

import sqlalchemy as sa

from libs.storage.database import Database, creating_tables
from libs.storage.transaction import Row, Transaction
from services.identity.domain.model import RefreshGrant, User

metadata = sa.MetaData()
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("roles", sa.String(200), nullable=False),  # space separated
    sa.Column("customer", sa.String(80), nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
)
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256: the token is not kept
    sa.Column("family", sa.String(32), nullable=False, index=True),
    sa.Column("user_id", sa.String(63), nullable=False),
    sa.Column("scope", sa.String(500), nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
)

MIGRATIONS = (creating_tables(1, "users and refresh tokens", metadata),)

_USER = "id, password_hash, roles, customer, create_us"
_ADD_USER = f"INSERT INTO users ({_USER}) VALUES ($1, $2, $3, $4, $5)"


def _user(row: Row) -> User:
    return User(
        user_id=row["id"],
        password_hash=row["password_hash"],
        roles=tuple(str(row["roles"]).split()),
        customer=row["customer"],
        create_us=row["create_us"],
    )


def _user_values(user: User) -> tuple[object, ...]:
    return (user.user_id, user.password_hash, " ".join(user.roles), user.customer, user.create_us)


class SqlAccountStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def user(self, user_id: str) -> User | None:
        async def user(tx: Transaction) -> User | None:
            row = await tx.fetchrow(f"SELECT {_USER} FROM users WHERE id = $1", user_id)
            return _user(row) if row else None

        return await self._database.transaction(user, write=False)

    async def add_user(self, user: User) -> bool:
        values = _user_values(user)

        async def add(tx: Transaction) -> bool:
            # The key settles a race for the id: the loser inserts nothing.
            return await tx.execute(f"{_ADD_USER} ON CONFLICT (id) DO NOTHING", *values) == 1

        return await self._database.transaction(add)

    async def put_user(self, user: User) -> None:
        values = _user_values(user)

        async def put(tx: Transaction) -> None:
            await tx.execute(
                f"{_ADD_USER} ON CONFLICT (id) DO UPDATE SET"
                " password_hash = excluded.password_hash, roles = excluded.roles,"
                " customer = excluded.customer, create_us = excluded.create_us",
                *values,
            )

        await self._database.transaction(put)

    async def add_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        async def add(tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO refresh_tokens (token_hash, family, user_id, scope, expires_us,"
                " used, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                token_hash,
                grant.family,
                grant.user_id,
                grant.scope,
                grant.expires_us,
                grant.used,
                grant.revoked,
            )

        await self._database.transaction(add)

    async def refresh(self, token_hash: str) -> RefreshGrant | None:
        async def refresh(tx: Transaction) -> RefreshGrant | None:
            row = await tx.fetchrow(
                "SELECT family, user_id, scope, expires_us, used, revoked FROM refresh_tokens"
                " WHERE token_hash = $1",
                token_hash,
            )
            if row is None:
                return None
            return RefreshGrant(
                family=row["family"],
                user_id=row["user_id"],
                scope=row["scope"],
                expires_us=row["expires_us"],
                used=bool(row["used"]),  # SQLite keeps booleans as 0 and 1
                revoked=bool(row["revoked"]),
            )

        return await self._database.transaction(refresh, write=False)

    async def use_refresh(self, token_hash: str) -> bool:
        # Conditional update: of two concurrent refreshes with one token, exactly one wins.
        async def use(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE refresh_tokens SET used = $2 WHERE token_hash = $1 AND used = $3",
                token_hash,
                True,
                False,
            )
            return changed == 1

        return await self._database.transaction(use)

    async def revoke_family(self, family: str) -> None:
        async def revoke(tx: Transaction) -> None:
            await tx.execute(
                "UPDATE refresh_tokens SET revoked = $2 WHERE family = $1", family, True
            )

        await self._database.transaction(revoke)
