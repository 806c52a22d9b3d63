# Confide's one binary in a small runtime image that runs as a non-root user.
#
#   docker build -t confide .
#   docker run --rm confide --help
#
# The build stage compiles the workspace's `confide` binary (release, locked dependencies).
# The runtime stage holds only that binary, the CA certificates and an unprivileged user whose
# home, /var/lib/confide, is the volume every role keeps its store in.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p confide-cli --bin confide \
 && strip target/release/confide

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/confide --create-home confide
COPY --from=build /src/target/release/confide /usr/local/bin/confide
USER 10001:10001
WORKDIR /var/lib/confide
VOLUME ["/var/lib/confide"]
# 7100 fleet, 7101 control, 7102 coordinator admin, 7103 node admin, 7104 key holder.
EXPOSE 7100 7101 7102 7103 7104
ENTRYPOINT ["confide"]
CMD ["--help"]
