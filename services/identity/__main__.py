"""`python -m services.identity`: run the identity service."""

from libs.server.grpc_app import run_service
from services.identity.app import build
from services.identity.config import IdentitySettings

if __name__ == "__main__":
    run_service(IdentitySettings, build)
