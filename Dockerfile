# syntax=docker/dockerfile:1
#
# The Berth image: a PIE, stripped binary that embeds its dependency list,
# on a distroless base with no shell and no package manager, running as
# 65532:65532. The root filesystem may be read-only; writable paths are the
# data volume /var/lib/berth and whatever the configuration names.
#
#   docker build -t berth .                                   # full flavor
#   docker build --build-arg CARGO_FEATURES=--no-default-features -t berth:minimal .
#
# Base images are pinned by digest, written out in the FROM lines so that
# Dependabot can propose updates.

FROM rust:1.98.0-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922 AS build
# Features for the build: empty for the full flavor, `--no-default-features`
# for the minimal one, or e.g. `--no-default-features --features metrics`.
ARG CARGO_FEATURES=""
ARG CARGO_AUDITABLE_VERSION=0.7.7
WORKDIR /src
RUN cargo install --locked "cargo-auditable@${CARGO_AUDITABLE_VERSION}"
COPY . .
# The release profile (Cargo.toml) sets LTO, one codegen unit, stripping and
# overflow checks; PIE and full RELRO are made explicit here.
ENV RUSTFLAGS="-C relocation-model=pie -C link-arg=-Wl,-z,relro,-z,now,-z,noexecstack"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo auditable build --release --locked --bin berth ${CARGO_FEATURES} \
    && install -D -m 0555 target/release/berth /out/usr/local/bin/berth \
    && install -d -m 0700 -o 65532 -g 65532 /out/var/lib/berth \
    && install -D -m 0444 config/container.toml /out/etc/berth/berth.toml

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="An OCI Distribution Specification v1.1 container registry" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/berth-registry/berth" \
      org.opencontainers.image.documentation="https://github.com/berth-registry/berth/blob/main/SECURITY.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/usr/local/bin/berth /usr/local/bin/berth
COPY --from=build /out/etc/berth/berth.toml /etc/berth/berth.toml
COPY --from=build --chown=65532:65532 /out/var/lib/berth /var/lib/berth
USER 65532:65532
EXPOSE 5000
VOLUME ["/var/lib/berth"]
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "--config", "/etc/berth/berth.toml"]
