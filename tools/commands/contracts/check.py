"""buf lint and buf breaking for the contracts, offline (and the messaging routes against the
same baseline).

Both run on images that tools/codegen/protogen.py builds (third-party imports come from installed
packages, never from the BSR). `breaking` compares the working tree with a git revision: by
default HEAD when proto/ has uncommitted changes, else HEAD~1 (the previous commit of main).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tools.codegen.protogen import contract_sources, generate  # noqa: E402

BUF = str(Path(sys.executable).parent / "buf")
CONFIG = REPO / "buf.yaml"


def build_image(proto_root: Path, scratch: Path) -> Path:
    image = scratch / "image.binpb"
    generate(proto_root, contract_sources(proto_root), scratch / "gen", image)
    return image


def lint(image: Path) -> subprocess.CompletedProcess[str]:
    return _buf("lint", str(image), "--path", "emporium", "--config", str(CONFIG))


def breaking(image: Path, against: Path) -> subprocess.CompletedProcess[str]:
    return _buf(
        "breaking",
        str(image),
        "--against",
        str(against),
        "--path",
        "emporium",
        "--config",
        str(CONFIG),
    )


def image_at_revision(revision: str, scratch: Path) -> Path | None:
    """The contracts as committed at `revision`, or None when it has no proto/ folder."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "proto"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return None
    root = scratch / "baseline"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return build_image(root / "proto", scratch / "baseline-out")


def default_baseline() -> str:
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "proto"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return "HEAD" if dirty else "HEAD~1"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which(BUF):
        raise SystemExit(f"buf not found at {BUF}: run tools/setup")
    return subprocess.run([BUF, *args], capture_output=True, text=True, check=False, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="git revision to check breaking changes against")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        image = build_image(REPO / "proto", scratch / "current")
        result = lint(image)
        print(result.stdout + result.stderr, end="")
        print(f"buf lint: {'ok' if result.returncode == 0 else 'FAILED'}")
        failed = result.returncode != 0
        revision = args.against or default_baseline()
        baseline = image_at_revision(revision, scratch)
        if baseline is None:
            print(f"buf breaking: no contracts at {revision}; nothing to compare")
        else:
            result = breaking(image, baseline)
            print(result.stdout + result.stderr, end="")
            print(
                f"buf breaking against {revision}: {'ok' if result.returncode == 0 else 'FAILED'}"
            )
            failed |= result.returncode != 0
            failed |= not messaging_unbroken(image, baseline, scratch, revision)
    return 1 if failed else 0


def messaging_unbroken(image: Path, baseline: Path, scratch: Path, revision: str) -> bool:
    """The messaging options' values (queues, streams, routes) against `baseline`: buf
    breaking guards the options' definitions, not what the contracts set them to."""
    sys.path.insert(0, str(scratch / "current" / "gen"))  # this tree's generated contracts
    from libs.messaging.contract import ContractError, breaking_changes, contract_of_image

    try:
        problems = breaking_changes(contract_of_image(baseline), contract_of_image(image))
    except ContractError as error:
        problems = [f"the options do not add up: {error}"]
    for problem in problems:
        print(f"messaging: {problem}")
    print(f"messaging contract against {revision}: {'FAILED' if problems else 'ok'}")
    return not problems


if __name__ == "__main__":
    raise SystemExit(main())
