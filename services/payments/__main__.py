"""`python -m services.payments`: run the payments service and charge worker."""

from libs.server.grpc_app import run_service
from services.payments.app import build
from services.payments.config import PaymentsSettings

if __name__ == "__main__":
    run_service(PaymentsSettings, build)
