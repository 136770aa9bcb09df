# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin tether

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home tether \
    && mkdir -p /etc/tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
COPY config/cookie.toml /etc/tether/tether.toml
ENV TETHER_CONFIG=/etc/tether/tether.toml
USER tether
# [listen] http in the mounted config decides the ports; 8080 is the default.
EXPOSE 8080
EXPOSE 9090
# Liveness through the admin API's /healthz (the config must have [admin] listen; the
# image's config listens on 0.0.0.0:9090 — put a token on it or keep the port private).
HEALTHCHECK --interval=10s --timeout=3s CMD ["tether", "ctl", "--admin", "http://127.0.0.1:9090", "healthz"]
ENTRYPOINT ["tether"]
CMD ["run"]
