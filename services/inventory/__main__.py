"""`python -m services.inventory`: run the inventory service."""

from libs.server.grpc_app import run_service
from services.inventory.app import build
from services.inventory.config import InventorySettings

if __name__ == "__main__":
    run_service(InventorySettings, build)
