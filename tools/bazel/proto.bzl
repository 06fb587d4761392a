"""Proto -> Python for Bazel, through the same generator as every other path
(tools/codegen/protogen.py: grpcio-tools protoc + mypy-protobuf). One call per proto package."""

def emporium_py_proto(name, srcs, deps = []):
    """Generates *_pb2.py, *_pb2_grpc.py and their .pyi stubs for `srcs` (files of this package).

    Args:
      name: the py_library to create.
      srcs: the package's .proto files.
      deps: emporium_py_proto targets of other packages these files import.
    """
    package = native.package_name()
    if not package.startswith("proto/"):
        fail("emporium_py_proto belongs in a package under proto/")
    relative = package[len("proto/"):]
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + suffix for suffix in ["_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"]]
    native.filegroup(name = name + "_protos", srcs = srcs, visibility = ["//visibility:public"])
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [dep + "_protos" for dep in deps],
        outs = outs,
        tools = ["//tools/codegen:protogen"],
        cmd = "$(execpath //tools/codegen:protogen) --contracts-only --proto-root proto " +
              "--out $(GENDIR)/proto " + " ".join([relative + "/" + src for src in srcs]),
    )
    native.py_library(
        name = name,
        srcs = [out for out in outs if out.endswith(".py")],
        data = [out for out in outs if out.endswith(".pyi")],
        # Puts proto/ on sys.path, so the modules import as emporium.<domain>.v1.*.
        imports = ["/".join([".."] * len(relative.split("/")))],
        deps = deps + ["//tools/codegen:buf_validate_py"],
        visibility = ["//visibility:public"],
    )
