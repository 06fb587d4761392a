"""Token verification as a part a service wires into its GrpcApp: identity's signing keys
(its JWKS) fetched through the client kit, so the fetch has a deadline, retries, a breaker and a
span like any other outbound call.

Where identity is comes from `<SERVICE>_IDENTITY_TARGET` (or `EMPORIUM_IDENTITY_TARGET`): a
host:port, or `dns:///identity:50051` in the cluster. Unset, a service verifies no tokens and
only its SPIFFE policy applies."""

from __future__ import annotations

from emporium.identity.v1 import identity_service_pb2_grpc as identity_grpc
from libs.rpcclient.channels import ChannelFactory
from libs.rpcclient.discovery import Addresses
from libs.rpcclient.upstream import Upstream
from libs.runtime.config import ServiceSettings
from libs.security.authentication import TokenAuthentication, identity_jwks
from libs.security.credentials import CertificateFiles
from libs.security.identity import TransportSecurity
from libs.security.tokens import TokenVerifier


def identity_tokens(
    settings: ServiceSettings, service: str, domain: str
) -> TokenAuthentication | None:
    """The middleware that verifies callers' bearer tokens for `service`, or None when the
    settings do not say where identity is."""
    if not settings.identity_target:
        return None
    security = TransportSecurity(settings.security)
    credentials = (
        CertificateFiles.for_service(settings.certs_dir, service).channel_credentials()
        if security is TransportSecurity.MTLS
        else None
    )
    channels = ChannelFactory(
        Addresses({"identity": settings.identity_target}), credentials=credentials
    )
    upstream = Upstream("identity", channels.channel("identity"))
    verifier = TokenVerifier(
        identity_jwks(
            upstream.stub(identity_grpc.IdentityServiceStub), settings.jwks_refetch_seconds
        ),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    return TokenAuthentication(verifier, security, domain, on_close=upstream.close)
