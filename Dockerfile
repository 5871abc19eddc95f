# The wasmop operator image: the host binary and the shipped plugins, on a distroless base,
# non-root. Build with `make docker-build` (docker build -t wasmop:VERSION .).
#
# Stage 1: build the host and the plugins with the pinned toolchain.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release -p wasmop --no-default-features \
 && cargo build --target wasm32-wasip2 --profile plugin -p appoperator -p deny-latest-tag \
 && mkdir -p /out/plugins /out/plugins-default \
 && cp target/release/wasmop /out/wasmop \
 && cp target/wasm32-wasip2/plugin/appoperator.wasm target/wasm32-wasip2/plugin/deny_latest_tag.wasm /out/plugins/ \
 && cp target/wasm32-wasip2/plugin/appoperator.wasm /out/plugins-default/

# Stage 2: glibc and CA certificates only; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wasmop /usr/local/bin/wasmop
COPY --from=build /out/plugins /plugins
# The default plugin alone, for deploy/overlays/registry-plugins (everything else from a registry).
COPY --from=build /out/plugins-default /plugins-default
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wasmop"]
CMD ["run", "--plugins=/plugins", "--leader-elect"]
