# syntax=docker/dockerfile:1
# The two bases can be swapped with build arguments: `make image` does so on
# machines that cannot pull them, with stand-ins of the same content
# (hack/image.sh says how they are made).
ARG BUILDER=rust:1.95-bookworm
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

# Build: the same release build that `make image-check` runs and checks. A
# builder that already holds /out/assumed-role-operator (the stand-in, whose
# binary this machine's own toolchain built from the same sources and lock
# file) skips it.
FROM ${BUILDER} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
RUN if [ ! -x /out/assumed-role-operator ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends cmake=3.25.* \
      && rm -rf /var/lib/apt/lists/* \
      && cargo build --release --locked \
      && install -D -m 0755 target/release/assumed-role-operator /out/assumed-role-operator; \
    fi

# Run: glibc and libgcc only, no shell, a non-root user.
FROM ${RUNTIME}
COPY --from=build /out/assumed-role-operator /usr/local/bin/assumed-role-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/assumed-role-operator"]
CMD ["run"]
