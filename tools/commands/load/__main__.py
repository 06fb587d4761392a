"""`tools/load` (`python -m tools.commands.load`): Locust against a running Emporium, headless by
default. It finds tools/run's system through var/ (the gateway's address in the registry, the
staff secret to stock products), runs the shoppers (and with --grpc the catalog gRPC user) for
a duration, prints a summary, keeps Locust's HTML report and CSV, and exits 1 when the share of
failed requests is over --max-failure-ratio. --web serves Locust's UI instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _registered(var: Path, service: str) -> str | None:
    """host:port of `service` in tools/run's registry (var/registry.json), if it is there."""
    registry = var / "registry.json"
    if not registry.is_file():
        return None
    addresses = json.loads(registry.read_text()).get(service) or []
    return str(addresses[-1]) if addresses else None


def _check_host(host: str) -> None:
    try:
        with urllib.request.urlopen(f"{host}/healthz", timeout=5) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError) as error:
        raise SystemExit(
            f"tools/load: --host {host} does not answer ({error}); start the system with "
            "tools/run, or pass --host"
        ) from None
    raise SystemExit(f"tools/load: --host {host}/healthz is not 200")


def summary(stats_csv: Path) -> tuple[int, int, list[str]]:
    """(requests, failures, the summary's lines) from Locust's `<prefix>_stats.csv`."""
    with stats_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    lines = [
        f"  {'type':<5} {'name':<42} {'requests':>8} {'failures':>8} {'median ms':>9} "
        f"{'p95 ms':>7} {'req/s':>7}"
    ]
    requests = failures = 0
    for row in rows:
        name = row["Name"]
        count, failed = int(row["Request Count"]), int(row["Failure Count"])
        if name == "Aggregated":
            requests, failures = count, failed
        lines.append(
            f"  {row['Type'][:5]:<5} {name[:42]:<42} {count:>8} {failed:>8} "
            f"{row['Median Response Time']:>9} {row['95%']:>7} {float(row['Requests/s']):>7.1f}"
        )
    return requests, failures, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="the gateway's URL (default: tools/run's, from var/)")
    parser.add_argument("--users", type=int, default=20, help="concurrent users (20)")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started a second")
    parser.add_argument("--duration", default="30s", help="how long: 30s, 5m, 1h (30s)")
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=0.0,
        help="exit 1 when failed requests exceed this share of all (0: any failure)",
    )
    parser.add_argument("--grpc", action="store_true", help="also drive catalog over gRPC")
    parser.add_argument("--web", action="store_true", help="Locust's web UI instead of headless")
    parser.add_argument("--web-port", type=int, default=8089)
    parser.add_argument("--var", type=Path, default=REPO / "var", help="tools/run's var/")
    parser.add_argument("--certs", type=Path, help="mTLS certificates for --grpc (var/certs)")
    parser.add_argument("--out", type=Path, help="report directory (var/load/<time>)")
    args = parser.parse_args()
    if args.users < 1 or args.spawn_rate <= 0:
        parser.error("--users must be at least 1 and --spawn-rate above 0")
    if not 0 <= args.max_failure_ratio <= 1:
        parser.error("--max-failure-ratio must be between 0 and 1")

    gateway = _registered(args.var, "gateway")
    host = (args.host or (f"http://{gateway}" if gateway else "http://127.0.0.1:8080")).rstrip("/")
    _check_host(host)
    out = args.out or args.var / "load" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    staff = args.var / "identity" / "secrets" / "staff"
    if staff.is_file():
        env["EMPORIUM_LOAD_STAFF_PASSWORD"] = staff.read_text().strip()
    users = ["Shopper"]
    if args.grpc:
        catalog = _registered(args.var, "catalog")
        if catalog is None:
            raise SystemExit(f"tools/load: --grpc: no catalog in {args.var / 'registry.json'}")
        users.append("CatalogGrpcUser")
        env["EMPORIUM_LOAD_GRPC_TARGET"] = catalog
        certs = args.certs or args.var / "certs"
        if certs.is_dir():
            env["EMPORIUM_LOAD_CERTS"] = str(certs)

    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--exit-code-on-error",
        "0",  # this command judges failures against its threshold
        *users,
    ]
    if args.web:
        command += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port)]
        print(f"Locust UI on http://127.0.0.1:{args.web_port} against {host} (Ctrl-C stops)")
        raise SystemExit(subprocess.call(command, env=env))
    command += [
        "--headless",
        "--run-time",
        args.duration,
        "--stop-timeout",
        "10",
        "--only-summary",
        "--csv",
        str(out / "stats"),
        "--html",
        str(out / "report.html"),
    ]
    print(
        f"load: {args.users} users ({args.spawn_rate:g}/s) of {' and '.join(users)} for "
        f"{args.duration} against {host}; reports in {out}",
        flush=True,
    )
    code = subprocess.call(command, env=env, stdout=subprocess.DEVNULL)
    stats = out / "stats_stats.csv"
    if code != 0 or not stats.is_file():
        raise SystemExit(f"tools/load: locust exited with {code} (see its output above)")
    requests, failures, lines = summary(stats)
    ratio = failures / requests if requests else 1.0
    print("\n".join(["", "Summary:", *lines, ""]))
    print(f"HTML report: {out / 'report.html'}   CSV: {out / 'stats_stats.csv'}")
    if requests == 0 or ratio > args.max_failure_ratio:
        print(
            f"FAILED: {failures} of {requests} requests failed ({ratio:.2%}; "
            f"--max-failure-ratio {args.max_failure_ratio:g}); see {out / 'stats_failures.csv'}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    print(f"OK: {requests} requests, {failures} failed ({ratio:.2%})")


if __name__ == "__main__":
    main()
