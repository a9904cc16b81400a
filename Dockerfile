# devourer: a statically linked agent (musl) with its eBPF program embedded, in an image that
# holds nothing else (no shell), for x86_64 and arm64. Build from the repository root, one
# multi-arch image (a manifest list; the build stage runs on the build machine and cross-builds
# arm64 with zig, as `cargo xtask build-static --target aarch64` does):
#   docker buildx build --platform linux/amd64,linux/arm64 -t devourer .
# or one architecture: docker build -t devourer .
# Run on a host (or as the DaemonSet in deploy/kubernetes):
#   docker run --rm --network host --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN \
#     --cap-add PERFMON devourer capture -i eth0
# Capture on request is in: libpcap is built statically from Debian's source package (with
# flex and bison); it needs CAP_NET_RAW too (--cap-add NET_RAW, or the
# deploy/kubernetes-capture variant of the DaemonSet). See README, "Capture on request".

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates python3-pip \
    flex bison make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The pinned nightly, rust-src and bpf-linker for the kernel program, then the static agent
# for the image's architecture (the commands CI runs: the x86_64 binary runs in an empty root,
# the aarch64 one in an arm64 VM).
RUN cargo xtask setup \
 && arch=$(if [ "$TARGETARCH" = arm64 ]; then echo aarch64; else echo x86_64; fi) \
 && cp "$(cargo xtask build-static --target "$arch" | tail -n 1)" /devourer

FROM scratch
COPY --from=build /devourer /devourer
# BigQuery's token endpoint is reached over TLS with the system roots.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
EXPOSE 9402
ENTRYPOINT ["/devourer"]
CMD ["capture", "--all-interfaces"]
