# One image for every service; the manifest's command picks one (python -m services.<name>).
# Built by tools/image, which first makes the bases (Debian bookworm by debootstrap: BASE with
# Debian's python3, BUILD_BASE with binutils too) and the wheelhouse (build/image/wheels, from
# requirements-runtime.lock), so this build reads nothing from the network.
ARG BASE=emporium/base:bookworm
ARG BUILD_BASE=emporium/build-base:bookworm

FROM ${BUILD_BASE} AS build
WORKDIR /src
COPY build/image/wheels /wheels
COPY requirements-runtime.lock ./
# pip runs from its wheel: neither venv gets pip, and the runtime stage gets no build tools.
# /opt/codegen (runtime packages + grpcio-tools, mypy-protobuf) only runs the code generator.
RUN python3 -m venv --without-pip /opt/venv \
    && python3 -m venv --without-pip /opt/codegen \
    && for venv in /opt/venv /opt/codegen; do \
        "$venv/bin/python" /wheels/tools/pip.whl/pip install --quiet --no-index --no-compile \
            --find-links /wheels -r requirements-runtime.lock || exit 1; \
    done \
    && /opt/codegen/bin/python /wheels/tools/pip.whl/pip install --quiet --no-index --no-compile \
        --no-deps --find-links /wheels -r /wheels/tools/codegen.txt
COPY proto proto
COPY tools tools
RUN /opt/codegen/bin/python tools/codegen/protogen.py --out /app/build/gen \
    && find /app/build/gen -name '*.pyi' -delete
COPY libs /app/libs
COPY services /app/services
# Debug symbols out of the wheels' shared libraries (about 25 MB), sources of compiled parts,
# stubs and the docs assets' source maps (7 MB) out; bytecode compiled here, since the runtime's
# root filesystem is read-only.
RUN find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} + \
    && find /opt/venv \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' \
        -o -name '*.map' \) -delete \
    && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv /app

FROM ${BASE}
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app:/app/build/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
CMD ["python", "-m", "services.gateway"]
