"""`python -m services.notifications`: run the notifications stream consumer."""

from libs.server.grpc_app import run_service
from services.notifications.app import build
from services.notifications.config import NotificationsSettings

if __name__ == "__main__":
    run_service(NotificationsSettings, build)
