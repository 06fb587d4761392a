"""Wiring: builds identity, its storage and its keys with plain constructors."""

from __future__ import annotations

from emporium.identity.v1 import identity_service_pb2_grpc as pb_grpc
from libs.security.identity_tokens import identity_tokens
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database, database_errors
from services.identity.adapters.key_files import SigningKeys
from services.identity.adapters.secret_files import load_clients, load_users
from services.identity.adapters.sql_repository import MIGRATIONS, SqlAccountStore
from services.identity.api.policy import POLICY
from services.identity.api.servicer import DOMAIN, IdentityServicer
from services.identity.config import IdentitySettings
from services.identity.domain.identity import Identity


async def build(settings: IdentitySettings) -> GrpcApp:
    keys = SigningKeys(settings.keys_dir, settings.access_token_ttl_seconds)
    clients = load_clients(settings.clients_file)
    database = Database(settings.database_url)
    await database.migrate(MIGRATIONS)
    store = SqlAccountStore(database)
    for user in load_users(settings.users_file) if settings.users_file else []:
        await store.put_user(user)
    identity = Identity(
        store,
        keys,
        clients,
        issuer=settings.issuer,
        audience=settings.audience,
        access_ttl=settings.access_token_ttl_seconds,
        refresh_ttl=settings.refresh_token_ttl_seconds,
    )
    app = GrpcApp(
        "identity",
        settings,
        domain=DOMAIN,
        policy=POLICY,
        translators=[database_errors],
        tokens=identity_tokens(settings, "identity", DOMAIN),
    )
    app.add_servicer(
        pb_grpc.add_IdentityServiceServicer_to_server, IdentityServicer(identity, keys)
    )
    app.add_health_check("database", database.ping)
    app.on_stop(database.dispose)
    return app
