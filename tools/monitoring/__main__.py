"""`python -m tools.monitoring [--check]`: renders tools/monitoring/definition.py into
mesh/components/monitoring/ (the Grafana dashboard, the Prometheus rule file, a ServiceMonitor
per service, and the kustomize Component that ships them and opens each service's metrics
port). `--check` exits 1 if the committed files differ from the definition."""

from __future__ import annotations

import argparse
import sys

from tools.monitoring.manifests import COMPONENT, REPO, rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args()
    stale = []
    for name, text in rendered().items():
        path = COMPONENT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m tools.monitoring", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
