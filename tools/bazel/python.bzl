"""A Python toolchain whose interpreter is the project's virtualenv (.venv at the workspace root).

The virtualenv carries the pinned dependencies (requirements.lock), so targets import grpcio,
protobuf, SQLAlchemy, ... exactly as the rest of the tooling does, and nothing is downloaded.
"""

def _venv_python_impl(ctx):
    root = ctx.path(Label("//:WORKSPACE")).dirname
    interpreter = root.get_child(".venv").get_child("bin").get_child("python3")
    if not interpreter.exists:
        fail("No virtualenv at %s: run tools/setup first." % interpreter)
    ctx.file("BUILD.bazel", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
)

py_runtime_pair(name = "pair", py3_runtime = ":py3")

toolchain(
    name = "toolchain",
    toolchain = ":pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(interpreter = interpreter))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    local = True,
)
