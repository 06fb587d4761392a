"""AccountStore on SQLAlchemy async core (SQLite or PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from libs.storage.database import Database, creating_tables, insert
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


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    m = row._mapping
    return User(
        user_id=m["id"],
        password_hash=m["password_hash"],
        roles=tuple(str(m["roles"]).split()),
        customer=m["customer"],
        create_us=m["create_us"],
    )


def _user_values(user: User) -> dict[str, object]:
    return {
        "id": user.user_id,
        "password_hash": user.password_hash,
        "roles": " ".join(user.roles),
        "customer": user.customer,
        "create_us": user.create_us,
    }


class SqlAccountStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def user(self, user_id: str) -> User | None:
        async with self._database.engine.connect() as connection:
            row = (await connection.execute(users.select().where(users.c.id == user_id))).first()
        return _user(row) if row else None

    async def add_user(self, user: User) -> bool:
        try:
            async with self._database.writing() as connection:
                await connection.execute(users.insert().values(**_user_values(user)))
        except IntegrityError:
            return False
        return True

    async def put_user(self, user: User) -> None:
        values = _user_values(user)
        async with self._database.writing() as connection:
            upsert = insert(connection, users).values(**values)
            await connection.execute(
                upsert.on_conflict_do_update(index_elements=[users.c.id], set_=values)
            )

    async def add_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        async with self._database.writing() as connection:
            await connection.execute(
                refresh_tokens.insert().values(
                    token_hash=token_hash,
                    family=grant.family,
                    user_id=grant.user_id,
                    scope=grant.scope,
                    expires_us=grant.expires_us,
                    used=grant.used,
                    revoked=grant.revoked,
                )
            )

    async def refresh(self, token_hash: str) -> RefreshGrant | None:
        query = refresh_tokens.select().where(refresh_tokens.c.token_hash == token_hash)
        async with self._database.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        return RefreshGrant(
            family=m["family"],
            user_id=m["user_id"],
            scope=m["scope"],
            expires_us=m["expires_us"],
            used=m["used"],
            revoked=m["revoked"],
        )

    async def use_refresh(self, token_hash: str) -> bool:
        # Conditional update: of two concurrent refreshes with one token, exactly one wins.
        query = (
            refresh_tokens.update()
            .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used.is_(False))
            .values(used=True)
        )
        async with self._database.writing() as connection:
            result = await connection.execute(query)
        return result.rowcount == 1

    async def revoke_family(self, family: str) -> None:
        query = (
            refresh_tokens.update().where(refresh_tokens.c.family == family).values(revoked=True)
        )
        async with self._database.writing() as connection:
            await connection.execute(query)
