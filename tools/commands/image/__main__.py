"""`tools/image`: builds the services' image (Dockerfile) with docker, podman or buildah, tagged
with the commit, and optionally exports it as an OCI archive.

  tools/image                      build emporium/services:<commit>
  tools/image --export DIR         ... and write DIR/emporium-services-<commit>.oci.tar
  tools/image --engine buildah     use this engine (default: the first of docker, podman,
                                   buildah that works here)
  tools/image --prune              first remove untagged images (earlier builds' layers: vfs
                                   keeps a full copy per layer), losing the layer cache

The Debian base (debootstrap) and the wheelhouse are cached under build/image, so a second run
only rebuilds the layers whose inputs changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.commands.image.build import ImageError, build_image, commit_tag, find_engine


def _progress(message: str) -> None:
    print(f"    {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="tools/image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--engine", choices=("docker", "podman", "buildah"))
    parser.add_argument("--tag", help="image tag (default: the commit, -dirty if changed)")
    parser.add_argument("--export", type=Path, metavar="DIR", help="write an OCI archive here")
    parser.add_argument("--prune", action="store_true", help="remove untagged images first")
    args = parser.parse_args()
    try:
        engine = find_engine(args.engine)
        _progress(f"engine: {engine.name}")
        if args.prune:
            engine.prune()
            _progress("pruned untagged images")
        built = build_image(engine, args.tag or commit_tag(), _progress)
        if args.export:
            archive = args.export / f"{built.reference.replace('/', '-').replace(':', '-')}.oci.tar"
            engine.export(built.reference, archive)
            _progress(f"export: {archive} ({archive.stat().st_size >> 20} MiB)")
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(built.reference)


if __name__ == "__main__":
    main()
