# ratelimit-proxy. `make test` is the one test command (CI runs it too).
GO ?= go
# An iteration count, not a duration: with a duration the fuzzer can fail with
# "context deadline exceeded" when its baseline run over the corpus is slow.
FUZZTIME ?= 50000x
# make fuzz: a longer search, this long per target.
FUZZLONG ?= 60s

.PHONY: test deps vet fuzz-smoke fuzz bench-smoke build bench soak clean

## test: install what the tests need, then format check, vet, race tests,
## fuzz smoke and a smoke pass of the benchmark suite (nothing there fails on speed)
test: deps vet
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz-smoke
	$(MAKE) bench-smoke

## deps: the one install step (scripts/deps.sh): the Debian packages the tests
## (curl, chromium for the status page, redis-server and redis-cli) and the
## benchmark peers need, installed with apt-get when missing (as root or through
## sudo), and the npm SDKs of the SDK tests (npm ci in proxy/testdata/sdk).
## NO_INSTALL=1 installs nothing and says what is skipped.
deps:
	@command -v $(GO) >/dev/null 2>&1 || { echo "Go is required: https://go.dev/dl/"; exit 1; }
	bash scripts/deps.sh test browser redis bench sdk

vet:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags soak ./proxy  # the soak test builds only with its tag: keep it compiling

# fuzz_all runs every fuzz target of every package for $(1): an iteration
# count (50000x) or a duration (60s).
define fuzz_all
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f ($(1))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(1) $$pkg || exit 1; \
	  done; \
	done
endef

## fuzz-smoke: run every fuzz target for FUZZTIME (the committed corpus runs in `go test` already)
fuzz-smoke:
	$(call fuzz_all,$(FUZZTIME))

## fuzz: every fuzz target for FUZZLONG (default 60s; make fuzz FUZZLONG=10m).
## An input that fails is written to the package's testdata/fuzz/FuzzXxx/:
## fix the code and commit the input with the fix.
fuzz:
	$(call fuzz_all,$(FUZZLONG))

## build: the binary in bin/; `ratelimit-proxy version` prints VERSION
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/ratelimit-proxy ./cmd/ratelimit-proxy

## bench-smoke: a tiny version of every benchmark row (installs the peers with apt when missing)
bench-smoke:
	SMOKE=1 bash bench/run.sh

## bench: the benchmark suite; writes BENCHMARKS.md
bench:
	bash bench/run.sh

## soak: the real proxy on loopback for SOAK (default 10m; make soak SOAK=2m)
## under mixed traffic: vanishing clients, upstream resets and stalls, slow
## bodies, idle tunnels and WebSockets, a flood of idle connections. It fails
## unless goroutines, heap and fds are back at their baseline and every
## steady key's full quota passes at once afterwards. Not part of make test.
SOAK ?= 10m
soak:
	SOAK=$(SOAK) $(GO) test -tags soak -run '^TestSoak$$' -count=1 -timeout 3h -v ./proxy

clean:
	rm -rf bin
