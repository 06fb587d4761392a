"""Runs a container of a rendered pod spec from the image's root filesystem the way kubelet
would, without a container runtime: the root read-only in a private mount namespace (unshare),
Secret and emptyDir volumes bind-mounted at their mountPaths with the manifest's modes and
fsGroup ownership, the environment as kubelet expands it, chroot, the image's working
directory, then the pod's uid, gid and fsGroup with no capabilities and no new privileges
(setpriv). Each step execs the next, so the service is the process that was started and
SIGTERM reaches it as kubelet's does. Needs root (unshare, mount, chroot, chown)."""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Document = dict[str, Any]
# kubelet's $(VAR) expansion in env values (earlier variables only; unknown ones stay).
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


def secret_data(documents: list[Document]) -> dict[str, dict[str, str]]:
    """Secret name -> its keys' values, from rendered Secrets (data is base64)."""
    found = {}
    for document in documents:
        if document["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in document.get("data", {}).items()}
            found[document["metadata"]["name"]] = {**data, **document.get("stringData", {})}
    return found


def kubelet_env(
    container: Document, secrets: Mapping[str, Mapping[str, str]], namespace: str
) -> dict[str, str]:
    """The container's environment: values, secretKeyRefs, the namespace, $(VAR) expanded."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            value = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["name"] not in secrets or ref["key"] not in secrets[ref["name"]]:
                raise KeyError(f"{entry['name']}: no key {ref['key']} in Secret {ref['name']}")
            value = secrets[ref["name"]][ref["key"]]
        elif (
            entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
        ):
            value = namespace
        else:
            raise ValueError(f"{entry['name']}: unsupported env source {entry}")
        env[entry["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), value)
    return env


def volumes(
    pod: Document, container: Document, secrets: Mapping[str, Mapping[str, str]], scratch: Path
) -> list[Mount]:
    """Host directories for the container's volumeMounts, as kubelet lays them out: Secret keys
    as files with defaultMode, and with an fsGroup owned by it and group-readable; emptyDirs
    writable by all, setgid to the fsGroup."""
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    by_name = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = by_name[mount["name"]]
        directory = scratch / mount["name"]
        directory.mkdir()
        if "secret" in volume:
            mode = int(volume["secret"].get("defaultMode", 0o644))
            if fs_group is not None:
                mode |= 0o040
            for key, value in secrets[volume["secret"]["secretName"]].items():
                path = directory / key
                path.write_text(value)
                os.chown(path, 0, fs_group if fs_group is not None else 0)
                path.chmod(mode)
            directory.chmod(0o755)
        elif "emptyDir" in volume:
            os.chown(directory, 0, fs_group if fs_group is not None else 0)
            directory.chmod(0o2777 if fs_group is not None else 0o777)
        else:
            raise ValueError(f"volume {mount['name']}: only secret and emptyDir are simulated")
        mounts.append(Mount(directory, mount["mountPath"], bool(mount.get("readOnly"))))
    return mounts


def launcher(
    root: Path,
    image_config: Document,
    pod: Document,
    container: Document,
    env: Mapping[str, str],
    mounts: list[Mount],
    script: Path,
) -> Path:
    """Writes `script`: an executable that runs the container's command with its arguments
    replaced by the script's own (`script -m services.x` runs `python -m services.x`)."""
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    user, group = security["runAsUser"], security.get("runAsGroup", security["runAsUser"])
    groups = [str(group)] + ([str(security["fsGroup"])] if "fsGroup" in security else [])
    quoted = shlex.quote
    steps = [f"mount --bind {quoted(str(root))} {quoted(str(root))}"]
    if security.get("readOnlyRootFilesystem"):
        steps.append(f"mount -o remount,bind,ro {quoted(str(root))}")
    steps += [
        f"mount --rbind /dev {quoted(str(root / 'dev'))}",
        f"mount --rbind /proc {quoted(str(root / 'proc'))}",
    ]
    for mount in mounts:
        target = quoted(str(inside(root, mount.target)))
        steps.append(f"mount --bind {quoted(str(mount.source))} {target}")
        if mount.read_only:
            steps.append(f"mount -o remount,bind,ro {target}")
    image_env = [item for item in image_config.get("Env") or []]
    environment = image_env + [f"{key}={value}" for key, value in env.items()]
    command = [
        "chroot", str(root),
        "/usr/bin/env", "-i", "-C", image_config.get("WorkingDir") or "/", *environment,
        "/usr/bin/setpriv", f"--reuid={user}", f"--regid={group}",
        f"--groups={','.join(dict.fromkeys(groups))}",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        str(container["args"][0]),
    ]  # fmt: skip
    inner = " && ".join(steps) + " && exec " + " ".join(quoted(c) for c in command) + ' "$@"'
    script.write_text(
        "#!/bin/sh\n"
        "# The container of a pod spec, run as kubelet would (tools/commands/image/pod.py).\n"
        f'exec unshare --mount --propagation private sh -c {quoted(inner)} sh "$@"\n'
    )
    script.chmod(0o755)
    return script


def inside(root: Path, path: str) -> Path:
    """`path` as the container sees it, resolved within `root`: symlinks (Debian's
    /var/run -> /run) lead to the image's files, never the host's."""
    resolved = root
    parts = [part for part in path.split("/") if part]
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"{path}: too many symlinks in the image")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                resolved = root
            continue
        resolved = resolved.parent if part == ".." and resolved != root else candidate
    return resolved


def mountpoints(root: Path, container: Document) -> None:
    """Creates the volumes' mount points in the image's root (a runtime does the same in the
    container's writable layer before it makes the root read-only)."""
    for mount in container.get("volumeMounts", []):
        inside(root, mount["mountPath"]).mkdir(parents=True, exist_ok=True)
