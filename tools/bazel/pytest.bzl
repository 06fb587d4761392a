"""pytest suites as Bazel py_test targets (JUnit XML goes where Bazel expects it)."""

def pytest_test(name, srcs, deps = [], data = [], tags = [], size = "medium", **kwargs):
    native.py_test(
        name = name,
        srcs = srcs + ["//tools/bazel:pytest_main.py"],
        main = "//tools/bazel:pytest_main.py",
        args = ["$(location %s)" % src for src in srcs],
        deps = deps + ["//libs/testing"],
        data = data,
        tags = tags,
        size = size,
        python_version = "PY3",
        **kwargs
    )
