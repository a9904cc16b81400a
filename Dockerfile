# devourer: a statically linked agent (musl) with its eBPF program embedded, in an image that
# holds nothing else (no shell). Build from the repository root:
#   docker build -t devourer .
# Run on a host (or as the DaemonSet in deploy/kubernetes):
#   docker run --rm --network host --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN \
#     --cap-add PERFMON devourer capture -i eth0
# The static binary is built without capture on request (libpcap has no static musl build
# on Debian): see README, "Capture on request".

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The pinned nightly, rust-src and bpf-linker for the kernel program, then the static agent
# (the same command CI runs before checking that the binary runs in an empty root).
RUN cargo xtask setup && cargo xtask build-static

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/devourer /devourer
# BigQuery's token endpoint is reached over TLS with the system roots.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
EXPOSE 9402
ENTRYPOINT ["/devourer"]
CMD ["capture", "--all-interfaces"]
