"""`python -m services.orders`: run the orders service."""

from libs.server.grpc_app import run_service
from services.orders.app import build
from services.orders.config import OrdersSettings

if __name__ == "__main__":
    run_service(OrdersSettings, build)
