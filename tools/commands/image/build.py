"""The service image's inputs and build: the Debian base (debootstrap, cached under build/image),
the wheelhouse (from requirements-runtime.lock, cached), and the engine that builds the
Dockerfile (docker or podman when one answers, else buildah in chroot isolation on vfs)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / "build" / "image"
WHEELS = CACHE / "wheels"
IMAGE = "emporium/services"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BaseRecipe:
    include: tuple[str, ...]  # added to minbase
    purge: tuple[str, ...] = ()  # removed afterwards (dpkg --purge, forced)


# Two roots from minbase: the runtime's adds only Debian's python3 (3.11 on bookworm: the venv
# links to it, so the wheels' compiled parts, cp311 manylinux, fit) and drops what a container
# that never installs anything or logs anyone in does not need (the package manager, perl,
# login tools: 20 MB); the build stage's also has binutils, to strip the wheels' shared
# libraries (a quarter of the image otherwise).
BASES = {
    "base": BaseRecipe(
        include=("python3",),
        purge=(
            "apt",
            "libapt-pkg6.0",
            "gpgv",
            "debian-archive-keyring",
            "libgnutls30",
            "perl-base",
            "passwd",
            "login",
            "libdb5.3",
        ),
    ),
    "build-base": BaseRecipe(include=("python3", "binutils")),
}
# bookworm's python3 (the image test checks it): requirements-runtime.lock is resolved for it.
IMAGE_PYTHON = "3.11.2"
# Not needed at run time and large; dpkg's database stays, so the image can still be inspected.
BASE_PRUNED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/log",
    "usr/lib/x86_64-linux-gnu/gconv",  # iconv's charsets: Python has its own codecs
)
# Only the build stage's code generator uses these (installed --no-deps over the runtime set).
CODEGEN_PACKAGES = ("grpcio-tools", "mypy-protobuf", "types-protobuf")

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """A build step failed; the message says which and what to do."""


def _run(command: Sequence[str], *, what: str, stdin: int | None = None) -> str:
    try:
        done = subprocess.run(
            list(command), stdin=stdin, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ImageError(f"{what}: {command[0]} is not installed") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed ({done.returncode}): {' '.join(command)}\n{tail}")
    return done.stdout


def _digest(*parts: str | bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def _stamped(path: Path, digest: str) -> bool:
    return path.is_file() and path.read_text().strip() == digest


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    """name (normalized) -> the `name==version` line of a pip lock file."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            pins[normalized(line.split("==", 1)[0].split("[", 1)[0])] = line
    return pins


# --- the base image's root filesystem -----------------------------------------------------------


def base_rootfs(name: str, progress: Progress) -> tuple[Path, str]:
    """A minimal Debian root (BASES[name]) as a tar, made once and reused while its recipe
    holds. Returns the tar and its digest (the recipe's)."""
    recipe = BASES[name]
    packages = recipe.include
    digest = _digest(SUITE, MIRROR, *packages, "purge", *recipe.purge, *BASE_PRUNED)
    tar = CACHE / f"{name}.tar"
    stamp = CACHE / f"{name}.stamp"
    if tar.is_file() and _stamped(stamp, digest):
        progress(f"{name}: cached {tar.relative_to(REPO)} ({tar.stat().st_size >> 20} MiB)")
        return tar, digest
    if shutil.which("debootstrap") is None:
        raise ImageError("base: debootstrap is not installed (tools/image installs it as root)")
    root = CACHE / f"{name}-rootfs"
    debs = CACHE / "debs"  # downloaded packages, so a changed recipe does not fetch them again
    shutil.rmtree(root, ignore_errors=True)
    debs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress(f"{name}: debootstrap --variant=minbase {SUITE} (+{','.join(packages)}) ...")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            f"--cache-dir={debs}",
            SUITE,
            str(root),
            MIRROR,
        ],
        what="debootstrap (needs root and Debian's mirror)",
    )
    if recipe.purge:
        progress(f"{name}: dpkg --purge {' '.join(recipe.purge)}")
        _run(
            [
                "chroot", str(root), "dpkg", "--purge", "--force-depends",
                "--force-remove-essential", "--force-remove-protected", *recipe.purge,
            ],
            what=f"{name}: purge",
        )  # fmt: skip
    for pruned in BASE_PRUNED:
        target = root / pruned
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    _run(
        ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."],
        what=f"{name}: tar of the root filesystem",
    )
    shutil.rmtree(root)
    stamp.write_text(digest + "\n")
    progress(f"{name}: made in {time.monotonic() - started:.0f} s ({tar.stat().st_size >> 20} MiB)")
    return tar, digest


# --- the wheelhouse -----------------------------------------------------------------------------


def wheelhouse(progress: Progress) -> Path:
    """Wheels for requirements-runtime.lock, the code generator's packages (their
    requirements.lock pins) and pip itself (tools/pip.whl, run from the wheel in the build)."""
    runtime_lock = REPO / "requirements-runtime.lock"
    dev_pins = lock_pins(REPO / "requirements.lock")
    missing = [name for name in CODEGEN_PACKAGES if name not in dev_pins]
    if missing:
        raise ImageError(f"wheelhouse: requirements.lock has no pin for {', '.join(missing)}")
    codegen = [dev_pins[name] for name in CODEGEN_PACKAGES]
    pip = f"pip=={importlib.metadata.version('pip')}"
    digest = _digest(runtime_lock.read_bytes(), *codegen, pip)
    stamp = CACHE / "wheels.stamp"
    if WHEELS.is_dir() and _stamped(stamp, digest):
        progress(f"wheelhouse: cached ({len(list(WHEELS.glob('*.whl')))} wheels)")
        return WHEELS
    started = time.monotonic()
    shutil.rmtree(WHEELS, ignore_errors=True)
    (WHEELS / "tools").mkdir(parents=True)
    progress("wheelhouse: pip wheel -r requirements-runtime.lock ...")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir"]
    _run([*pip_wheel, str(WHEELS), "-r", str(runtime_lock), *codegen], what="wheelhouse")
    _run([*pip_wheel, str(WHEELS / "tools"), pip], what="wheelhouse (pip)")
    (pip_file,) = (WHEELS / "tools").glob("pip-*.whl")
    pip_file.rename(WHEELS / "tools" / "pip.whl")
    (WHEELS / "tools" / "codegen.txt").write_text("\n".join(codegen) + "\n")
    stamp.write_text(digest + "\n")
    count = len(list(WHEELS.glob("*.whl")))
    progress(f"wheelhouse: {count} wheels in {time.monotonic() - started:.0f} s")
    return WHEELS


# --- engines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: docker, podman or buildah."""

    name: str

    @property
    def _prefix(self) -> list[str]:
        # No overlay mounts where buildah runs without a daemon (a container, CI): vfs works.
        return ["buildah", "--storage-driver", "vfs"] if self.name == "buildah" else [self.name]

    def run(self, *args: str, what: str) -> str:
        return _run([*self._prefix, *args], what=what)

    def has_image(self, reference: str) -> bool:
        inspect = ["inspect", "--type", "image"] if self.name == "buildah" else ["image", "inspect"]
        done = subprocess.run([*self._prefix, *inspect, reference], capture_output=True)
        return done.returncode == 0

    def import_base(self, tar: Path, reference: str) -> None:
        if self.name != "buildah":
            self.run("import", str(tar), reference, what=f"{self.name} import")
            return
        container = self.run("from", "scratch", what="buildah from scratch").strip()
        try:
            self.run("add", container, str(tar), "/", what="buildah add (base)")
            self.run("commit", "--quiet", container, reference, what="buildah commit (base)")
        finally:
            self.run("rm", container, what="buildah rm")

    def build(self, tags: Sequence[str], build_args: dict[str, str]) -> None:
        args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
        tag_args = [f"--tag={tag}" for tag in tags]
        if self.name == "buildah":
            command = ["bud", "--isolation", "chroot", "--layers", "--pull-never"]
        else:
            command = ["build", "--pull=false"] if self.name == "podman" else ["build"]
        self.run(*command, *args, *tag_args, "--file", "Dockerfile", str(REPO), what="image build")

    def size(self, reference: str) -> int:
        if self.name == "buildah":
            # buildah gives the size in words only ("255 MB", decimal units).
            (image,) = json.loads(self.run("images", "--json", reference, what="buildah images"))
            number, unit = str(image["size"]).split()
            return int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])
        output = self.run(
            "image", "inspect", "--format", "{{.Size}}", reference, what="image inspect"
        )
        return int(output.strip())

    def export(self, reference: str, archive: Path) -> None:
        """An OCI archive of the image (docker: its `save` tar, OCI layout since Docker 25)."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        if self.name == "buildah":
            self.run("push", reference, f"oci-archive:{archive}:{reference}", what="export")
        elif self.name == "podman":
            self.run(
                "save", "--format", "oci-archive", "-o", str(archive), reference, what="export"
            )
        else:
            self.run("save", "-o", str(archive), reference, what="export")

    def prune(self) -> None:
        """Removes untagged images: earlier builds' layers, and with them the layer cache."""
        if self.name == "buildah":
            self.run("rmi", "--prune", what="buildah rmi --prune")
        else:
            self.run("image", "prune", "--force", what="image prune")

    def config(self, reference: str) -> dict[str, Any]:
        """The image's OCI config (Env, WorkingDir, User, Cmd)."""
        if self.name == "buildah":
            output = self.run("inspect", "--type", "image", reference, what="buildah inspect")
            return dict(json.loads(output)["OCIv1"]["config"])
        output = self.run("image", "inspect", reference, what="image inspect")
        return dict(json.loads(output)[0]["Config"])

    @contextmanager
    def rootfs(self, reference: str, scratch: Path) -> Iterator[Path]:
        """The image's root filesystem as a directory (a working container's, for buildah)."""
        if self.name == "buildah":
            container = self.run("from", "--pull-never", reference, what="buildah from").strip()
            try:
                yield Path(self.run("mount", container, what="buildah mount").strip())
            finally:
                self.run("umount", container, what="buildah umount")
                self.run("rm", container, what="buildah rm")
            return
        container = self.run("create", reference, what="create").strip()
        try:
            root = scratch / "rootfs"
            root.mkdir()
            archive = scratch / "rootfs.tar"
            self.run("export", "-o", str(archive), container, what="export")
            _run(["tar", "-C", str(root), "-xf", str(archive)], what="unpack rootfs")
            archive.unlink()
            yield root
        finally:
            self.run("rm", container, what="rm")


def find_engine(preferred: str | None = None) -> Engine:
    """The engine asked for, or the first of docker, podman, buildah that works here (a docker
    client without a reachable daemon does not count)."""
    names = [preferred] if preferred else ["docker", "podman", "buildah"]
    for name in names:
        if name not in ("docker", "podman", "buildah"):
            raise ImageError(f"--engine: {name!r} is not one of docker, podman, buildah")
        if shutil.which(name) is None:
            continue
        probe = ["buildah", "version"] if name == "buildah" else [name, "info"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return Engine(name)
    raise ImageError(
        f"no working container engine ({', '.join(names)}): install buildah "
        "(tools/image does so on Debian as root) or start a docker/podman daemon"
    )


def commit_tag() -> str:
    """The commit the image is built from; `-dirty` when the work tree differs from it."""
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], what="git").strip()
    dirty = _run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], what="git"
    ).strip()
    return f"{commit}-dirty" if dirty else commit


@dataclass(frozen=True)
class Built:
    reference: str
    engine: Engine
    seconds: float
    size_bytes: int


def build_image(engine: Engine, tag: str, progress: Progress) -> Built:
    """Base and wheelhouse (cached), then the Dockerfile, tagged `emporium/services:<tag>`."""
    started = time.monotonic()
    build_args = {}
    for name in BASES:
        tar, digest = base_rootfs(name, progress)
        base = f"emporium/{name}:{SUITE}-{digest}"
        if engine.has_image(base):
            progress(f"{name}: {base} is in {engine.name}'s storage")
        else:
            progress(f"{name}: importing {base} into {engine.name} ...")
            engine.import_base(tar, base)
        build_args[name.upper().replace("-", "_")] = base
    wheelhouse(progress)
    reference = f"{IMAGE}:{tag}"
    progress(f"build: {engine.name} builds {reference} from Dockerfile ...")
    engine.build([reference], build_args)
    seconds = time.monotonic() - started
    size = engine.size(reference)
    progress(f"build: {reference} ({size / 1e6:.0f} MB) in {seconds:.0f} s")
    return Built(reference, engine, seconds, size)
