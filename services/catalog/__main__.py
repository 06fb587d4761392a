"""`python -m services.catalog`: run the catalog service."""

from libs.server.grpc_app import run_service
from services.catalog.app import build
from services.catalog.config import CatalogSettings

if __name__ == "__main__":
    run_service(CatalogSettings, build)
