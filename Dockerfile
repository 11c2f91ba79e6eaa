# syntax=docker/dockerfile:1
#
# The `pier` image: one binary for both roles (`pier operator`, `pier node`; the parts are described
# in docs/architecture.md).
#
#   docker build -t pier:dev .
#   kind load docker-image pier:dev --name pier     # then: helm install ... --set image.repository=pier,image.tag=dev
#
# Build stage: Debian 12 with Rust and the C libraries the nftables bindings link against
# (libnftnl 1.2.x and libmnl 1.0.4 from libnftnl-dev / libmnl-dev; pkg-config finds them), and the
# iptables tools. It assembles the runtime root filesystem from image/rootfs.list with
# image/rootfs.sh: the binary, the iptables tools and the shared libraries they load, nothing
# else. Runtime stage: that root filesystem, FROM scratch. tests/image.rs assembles the same
# list from this machine (Debian 12), imports it into Docker and runs `pier up` from it.
# Pier speaks netlink and nftables directly; it runs the iptables tools only where the node has
# another firewall's iptables filter table (Docker, ufw, firewalld's iptables backend), to add
# the accepts its bridges need there: those tables are written by their own tools, as
# kube-proxy's and Calico's images carry iptables for the same reason.
#
# The image's user is 65532 (`nonroot`): the operator runs as it. The node daemon needs root and
# network capabilities; the chart's DaemonSet sets runAsUser 0 for it.
#
# The binary it carries is stripped of debug info by Cargo.toml's [profile.release] (its size and
# the image's are measured in BENCHMARKS.md, section memory, by benches/image.sh); `cargo build
# --profile release-debug` builds one with line tables.
#
# Build it and push it where your nodes pull from (no public registry carries it):
#
#   docker build -t registry.example.com/pier:0.1.0 . && docker push registry.example.com/pier:0.1.0
#   helm install pier charts/pier ... --set image.repository=registry.example.com/pier

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config iptables \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pier \
 && install -D -m 0755 target/release/pier /usr/local/bin/pier \
 && image/rootfs.sh image/rootfs.list /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pier" \
      org.opencontainers.image.description="Docker-style container networking for Kubernetes: pier operator, pier node" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/pier"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pier"]
CMD ["--help"]
