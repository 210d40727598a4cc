# syntax=docker/dockerfile:1
# tokenvend container image: a static-enough Rust binary on distroless (glibc, no shell),
# running as the distroless nonroot user (65532) with a read-only root filesystem. The only
# paths written are /var/lib/tokenvend (the data directory: mount a volume there) and /tmp.
#
#   docker build --build-arg GIT_REVISION=$(git rev-parse --short=12 HEAD) -t tokenvend:0.1.0 .
#
# The Helm chart in helm/tokenvend matches this image: runAsUser 65532, ports 50051 and 8080,
# the data volume at /var/lib/tokenvend, the binary as ENTRYPOINT with a subcommand as args
# (tests/chart checks that they stay in step).

ARG RUST_IMAGE=rust:1.94-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# `tokenvend version` reports this (read at compile time by crates/server/build.rs); the
# build context has no .git, so without it the revision is "unknown".
ARG GIT_REVISION=""
ENV TOKENVEND_GIT_REVISION=${GIT_REVISION} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY . .
# protoc is not needed (the proto crate compiles with protox). The registry and target
# directories are BuildKit cache mounts, so the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist --locked -p tokenvend-server --bin tokenvend \
 && install -D -m 0755 target/dist/tokenvend /out/tokenvend \
 && mkdir -p /out/empty-data-dir

FROM ${RUNTIME_IMAGE} AS runtime
ARG GIT_REVISION=""
LABEL org.opencontainers.image.title="tokenvend" \
      org.opencontainers.image.description="Multi-tenant OAuth 2.0 token-vending service (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_REVISION}"
COPY --from=build /out/tokenvend /usr/local/bin/tokenvend
# The data directory exists and belongs to the runtime user, so the image also runs without
# a volume there (docker run without -v); Kubernetes mounts an emptyDir or a PVC over it.
COPY --from=build --chown=65532:65532 /out/empty-data-dir /var/lib/tokenvend
USER 65532:65532
WORKDIR /var/lib/tokenvend
ENV TOKENVEND_DATA_DIR=/var/lib/tokenvend \
    TOKENVEND_GRPC_ADDR=0.0.0.0:50051 \
    TOKENVEND_HTTP_ADDR=0.0.0.0:8080 \
    TOKENVEND_LOG_FORMAT=json
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/tokenvend"]
CMD ["serve"]
