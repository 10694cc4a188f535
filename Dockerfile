# syntax=docker/dockerfile:1
# The pyxlb agent image (docs/deploy.md): `make image` (scripts/build-image.sh), or
# `docker build -t pyxlb:0.1.0 .` where the Debian base images can be pulled. Behind a
# TLS-intercepting proxy, hand pip the proxy's CA bundle as a build secret, which no layer
# keeps: `--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`.
# Build stage: compile the BPF objects (clang) and the Cython modules (against libbpf) into
# a wheel, and install it with its dependencies into a venv (then pip and setuptools leave
# it: the agent needs neither). Runtime stage: the same Debian
# release, so the venv's Python and libbpf match, with only the shared libraries it loads.

FROM debian:bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev clang libbpf-dev libelf-dev zlib1g-dev pkg-config \
        python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/pyxlb \
    && /opt/pyxlb/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/pyxlb/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && /opt/pyxlb/bin/pip install --no-cache-dir --no-index --find-links /wheels pyxlb \
    && /opt/pyxlb/bin/pip uninstall --yes --quiet pip setuptools

FROM debian:bookworm-slim AS runtime
# libbpf1 (with libelf1 and zlib) for pyxlb._bpf; bird2: the BGP speaker of `announce: bgp`
# pools; iproute2 to inspect a node from the pod
# (`ip link` shows the attached XDP program)
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 libbpf1 libelf1 iproute2 bird2 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pyxlb /opt/pyxlb
ENV PATH=/opt/pyxlb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# root: Kubernetes gives the capabilities a container adds only to a root process (it sets
# no ambient capabilities); the DaemonSet adds the ones the agent needs and drops the rest
USER 0
ENTRYPOINT ["pyxlb"]
CMD ["agent"]
