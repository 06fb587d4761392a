"""The one code generator for every path (Bazel, the run and test commands, editors).

protoc (grpcio-tools) with the grpc plugin and mypy-protobuf turns `proto/**/*.proto` into
`*_pb2.py`, `*_pb2_grpc.py` and typed `.pyi` stubs. Third-party imports never come from the
network or from copies in the tree: they are read from installed packages into a descriptor set
(googleapis-common-protos for google/api, google/rpc and google/type; protovalidate, whose
generated module embeds buf/validate/validate.proto) and handed to protoc with
`--descriptor_set_in`. The same run writes a buf image of the contracts for `buf lint/breaking`.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]

# Python modules (official runtime) whose files our contracts may import.
_THIRD_PARTY_MODULES = (
    "google.api.annotations_pb2",
    "google.api.client_pb2",
    "google.api.field_behavior_pb2",
    "google.api.resource_pb2",
    "google.rpc.status_pb2",
    "google.rpc.error_details_pb2",
    "google.type.money_pb2",
    "google.protobuf.empty_pb2",
    "google.protobuf.field_mask_pb2",
    "google.protobuf.timestamp_pb2",
    "google.protobuf.duration_pb2",
    "google.protobuf.struct_pb2",
    "google.protobuf.descriptor_pb2",
)
PROTOVALIDATE_FILE = "buf/validate/validate.proto"
STUBBED_FILES = (
    "google/api/annotations.proto",
    "google/api/client.proto",
    "google/api/field_behavior.proto",
    "google/api/http.proto",
    "google/api/resource.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/type/money.proto",
)


def _protovalidate_file() -> descriptor_pb2.FileDescriptorProto:
    """buf/validate/validate.proto as embedded in the installed protovalidate package."""
    module = importlib.import_module("protovalidate._gen.buf.validate.validate_pb")
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(module._DESC.proto.to_binary())
    return proto


def third_party_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Every third-party file the contracts can import, dependencies first."""
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    for name in _THIRD_PARTY_MODULES:
        importlib.import_module(name)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add_from_pool(filename: str) -> None:
        if filename in files:
            return
        file = pool.FindFileByName(filename)
        for dependency in file.dependencies:
            add_from_pool(dependency.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files[filename] = proto

    for name in _THIRD_PARTY_MODULES:
        add_from_pool(importlib.import_module(name).DESCRIPTOR.name)
    validate = _protovalidate_file()
    for dependency in validate.dependency:
        add_from_pool(dependency)
    files[validate.name] = validate
    return descriptor_pb2.FileDescriptorSet(file=list(files.values()))


def _run_protoc(args: list[str]) -> None:
    # protoc.main takes argv[0] and reads the bundled well-known types from grpc_tools.
    code = protoc.main(["protoc", *args])
    if code != 0:
        raise SystemExit(f"protoc failed ({code}): protoc {' '.join(args)}")


def _plugin_args(out: Path) -> list[str]:
    bindir = Path(sys.executable).parent
    return [
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
    ]


def generate(
    proto_root: Path,
    sources: list[str],
    out: Path,
    image: Path | None,
    *,
    protovalidate: bool = True,
    stubs: Path | None = None,
) -> None:
    """Generate Python for `sources` (paths relative to proto_root) and, with `protovalidate`,
    for buf/validate/validate.proto."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        deps = Path(scratch) / "deps.binpb"
        deps.write_bytes(third_party_descriptor_set().SerializeToString())
        common = [f"--descriptor_set_in={deps}", f"--proto_path={proto_root}"]
        if sources:
            _run_protoc([*common, *_plugin_args(out), *sources])
        if protovalidate:
            # protovalidate's runtime is not the official one, so the official runtime needs its
            # own module for buf/validate/validate.proto, generated from the same embedded file.
            _run_protoc(
                [
                    f"--descriptor_set_in={deps}",
                    f"--python_out={out}",
                    f"--mypy_out=quiet:{out}",
                    f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
                    PROTOVALIDATE_FILE,
                ]
            )
        if stubs is not None:
            # Typed stubs for the third-party messages the code uses (their packages ship none
            # that match the installed versions), from the same descriptors.
            stubs.mkdir(parents=True, exist_ok=True)
            _run_protoc(
                [
                    f"--descriptor_set_in={deps}",
                    f"--mypy_out=quiet:{stubs}",
                    f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
                    *STUBBED_FILES,
                ]
            )
        if image is not None and sources:
            image.parent.mkdir(parents=True, exist_ok=True)
            _run_protoc(
                [
                    *common,
                    "--include_imports",
                    "--include_source_info",
                    f"--descriptor_set_out={image}",
                    *sources,
                ]
            )


def contract_sources(proto_root: Path) -> list[str]:
    return sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=REPO / "proto")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gen")
    parser.add_argument("--image", type=Path, help="also write a buf image (FileDescriptorSet)")
    parser.add_argument("--stubs", type=Path, help="also write .pyi stubs of third-party protos")
    parser.add_argument("--clean", action="store_true", help="empty --out first")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--contracts-only",
        action="store_true",
        help="skip buf/validate/validate.proto (Bazel generates it once)",
    )
    only.add_argument(
        "--protovalidate-only",
        action="store_true",
        help="generate only buf/validate/validate.proto",
    )
    parser.add_argument("sources", nargs="*", help="files under --proto-root (default: all)")
    args = parser.parse_args()
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    sources = [] if args.protovalidate_only else args.sources or contract_sources(args.proto_root)
    generate(
        args.proto_root,
        sources,
        args.out,
        args.image,
        protovalidate=not args.contracts_only,
        stubs=args.stubs,
    )
    if not args.contracts_only and not args.protovalidate_only:
        print(f"protogen: {len(sources)} contract file(s) -> {args.out}")


if __name__ == "__main__":
    main()
