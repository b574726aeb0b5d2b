# Builds the `surelink` command-line tool and runs it.
#
#   docker build -t surelink .
#   docker run --rm --network host surelink recv --listen 0.0.0.0:9000 --once > copy.bin
#   docker run --rm --network host -v "$PWD:/data" surelink send --to HOST:9000 --in /data/original.bin
#
# The build stage compiles a release binary with the locked dependencies;
# the runtime stage holds only that binary on a small Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo install --locked --path crates/surelink-cli --root /out

FROM debian:bookworm-slim
COPY --from=build /out/bin/surelink /usr/local/bin/surelink
RUN useradd --system --no-create-home surelink
USER surelink
ENTRYPOINT ["surelink"]
CMD ["--help"]
