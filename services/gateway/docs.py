"""Interactive documentation served offline: Swagger UI at `/docs` and GraphiQL at `GET /graphql`.

Both run from assets of installed PyPI packages, never a CDN: Swagger UI from
`swagger-ui-bundle-v2` (Apache-2.0), GraphiQL with React from `graphene-django-graphiql-static`
(its built UMD files; GraphiQL and React are MIT). Their versions are the pins in
requirements.lock.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

DOCS_ASSETS = "/docs/assets"
GRAPHIQL_ASSETS = "/graphql/assets"


def _package_directory(package: str, *parts: str) -> Path:
    """A data directory inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed: run tools/setup (requirements.lock)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def swagger_ui_directory() -> Path:
    vendor = _package_directory("swagger_ui_bundle", "vendor")
    found = sorted(vendor.glob("swagger-ui-*"))
    if not found:
        raise RuntimeError(f"no swagger-ui-* in {vendor}")
    return found[-1]


def graphiql_directory() -> Path:
    return _package_directory(
        "graphene_django_graphiql_static", "static", "graphene_django_graphiql_static"
    )


def asset_mounts() -> list[Mount]:
    return [
        Mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_directory())),
        Mount(GRAPHIQL_ASSETS, StaticFiles(directory=graphiql_directory())),
    ]


DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Emporium API</title>
  <link rel="stylesheet" href="{DOCS_ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{DOCS_ASSETS}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_ASSETS}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      docExpansion: "list",
      tagsSorter: "alpha",
      persistAuthorization: true,
      displayRequestDuration: true,
      presets: [SwaggerUIBundle.presets.apis],
    }});
  </script>
</body>
</html>
"""

GRAPHIQL_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Emporium GraphQL</title>
  <style>html, body, #graphiql {{ height: 100%; margin: 0; overflow: hidden; }}</style>
  <link rel="stylesheet" href="{GRAPHIQL_ASSETS}/graphiql.min.css">
  <script src="{GRAPHIQL_ASSETS}/react.production.min.js"></script>
  <script src="{GRAPHIQL_ASSETS}/react-dom.production.min.js"></script>
  <script src="{GRAPHIQL_ASSETS}/graphiql.min.js"></script>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script>
    // Put {{"Authorization": "Bearer <token from POST /v1/token>"}} in the Headers tab.
    const fetcher = GraphiQL.createFetcher({{ url: "/graphql" }});
    const defaultQuery = `{{
  listProducts(pageSize: 3) {{
    products {{ name title }}
    nextPageToken
  }}
}}
`;
    ReactDOM.render(
      React.createElement(GraphiQL, {{ fetcher, defaultQuery, headerEditorEnabled: true }}),
      document.getElementById("graphiql"),
    );
  </script>
</body>
</html>
"""
