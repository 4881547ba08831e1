# ratelimit-proxy container: a static binary on distroless, running as nonroot.
# Build: docker build -t ratelimit-proxy .
# Run:   docker run -p 127.0.0.1:8080:8080 -v rlp-data:/data ratelimit-proxy
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version `ratelimit-proxy version` prints: docker build --build-arg VERSION=v1.2.3 .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/ratelimit-proxy ./cmd/ratelimit-proxy \
 && /out/ratelimit-proxy check -config config.example.yaml -listen 0.0.0.0:8080 -admin 0.0.0.0:8081 >/dev/null

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ratelimit-proxy /usr/local/bin/ratelimit-proxy
COPY config.example.yaml /etc/ratelimit-proxy/config.yaml
# The CA lives in /data: keep it in a volume so clients trust it across restarts.
VOLUME ["/data"]
EXPOSE 8080 8081
# The image has no shell: the binary asks its own admin /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s CMD ["/usr/local/bin/ratelimit-proxy", "health", "-admin", "127.0.0.1:8081"]
ENTRYPOINT ["/usr/local/bin/ratelimit-proxy"]
# Inside a container the proxy must listen on all interfaces; publish the
# ports on loopback (or a private network) only. Listening beyond loopback
# needs clients or client_tokens in the config: config.example.yaml admits
# loopback and the private ranges (docker's networks); a config mounted in
# its place must say who may use the proxy too, or it refuses to start.
CMD ["-config", "/etc/ratelimit-proxy/config.yaml", "-data-dir", "/data", "-listen", "0.0.0.0:8080", "-admin", "0.0.0.0:8081"]
