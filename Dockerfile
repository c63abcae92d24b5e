# syntax=docker/dockerfile:1
# Build: the same release build that `make image-check` runs and checks.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.* \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/assumed-role-operator /out/assumed-role-operator

# Run: glibc and libgcc only, no shell, a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/assumed-role-operator /usr/local/bin/assumed-role-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/assumed-role-operator"]
CMD ["run"]
