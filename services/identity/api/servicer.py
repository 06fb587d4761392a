"""IdentityService over gRPC."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from emporium.identity.v1 import identity_service_pb2 as pb
from emporium.identity.v1 import identity_service_pb2_grpc as pb_grpc
from libs.runtime.resource_names import resource_id
from services.identity.api.mapping import token_message, user_message
from services.identity.domain.identity import Identity
from services.identity.domain.ports import KeyRing

DOMAIN = "identity.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, identity: Identity, keys: KeyRing) -> None:
        self._identity = identity
        self._keys = keys

    async def IssueToken(self, request: pb.IssueTokenRequest, context: Context) -> pb.Token:
        if request.grant_type == "password":
            issued = await self._identity.password_grant(
                request.username, request.password, request.scope
            )
        elif request.grant_type == "client_credentials":
            issued = await self._identity.client_credentials_grant(
                request.client_id, request.client_secret, request.scope
            )
        else:  # refresh_token: validation admits no other grant type
            issued = await self._identity.refresh_grant(request.refresh_token)
        return token_message(issued)

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._identity.revoke(request.token)
        return empty_pb2.Empty()

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.Jwks:
        return pb.Jwks(keys=[pb.Jwk(**jwk) for jwk in self._keys.jwks()["keys"]])

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.User:
        return user_message(await self._identity.sign_up(request.user_id, request.user.password))

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.User:
        return user_message(await self._identity.user(resource_id(request.name, "users/{user}")))
