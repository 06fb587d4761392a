"""Identity's domain objects as the contract's messages."""

from __future__ import annotations

from emporium.identity.v1 import identity_service_pb2 as pb
from libs.storage.timestamps import from_micros, timestamp_message
from services.identity.domain.model import IssuedToken, User


def token_message(issued: IssuedToken) -> pb.Token:
    return pb.Token(
        access_token=issued.access_token,
        token_type="Bearer",
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
        scope=issued.scope,
    )


def user_message(user: User) -> pb.User:
    return pb.User(
        name=user.name,
        roles=list(user.roles),
        customer=user.customer,
        create_time=timestamp_message(from_micros(user.create_us)),
    )
