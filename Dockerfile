# The kit as two single executables (init-database, test-db-connectivity), made at build time,
# so that a container starts with no package registry, no Bun and no node_modules: the Compose
# db-init boots on an air-gapped network, through a registry outage, past rate limits.
#
#   docker build -t pg-startup-kit:local .
#   docker run --rm -e DATABASE_URL=postgres://app:secret@db:5432/app pg-startup-kit:local --check
#
# The build stage reaches the npm registry (npm ci: postgres.js and Bun, pinned by the lockfile);
# the runtime stage holds the two executables and nothing else, and runs as a non-root user.
# Both base images are build arguments, so a mirror or a locally made image can stand in.
ARG BUILD_IMAGE=node:22-bookworm-slim
# glibc and libstdc++ with no shell and no package manager; ":nonroot" is uid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Production dependencies only: postgres (the client) and bun (the compiler); scripts run so
# that the bun package installs its binary.
RUN npm ci --omit=dev --no-audit --no-fund
COPY init-database.ts test-db-connectivity.ts ./
# --bytecode (ESM needs --format esm) starts faster; tests/offline-image.test.ts runs this very
# line and then the executables with no network at all.
RUN node_modules/.bin/bun build --compile --bytecode --format esm --outfile dist/init-database init-database.ts \
 && node_modules/.bin/bun build --compile --bytecode --format esm --outfile dist/test-db-connectivity test-db-connectivity.ts \
 && dist/init-database --help >/dev/null

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/dist/init-database /src/dist/test-db-connectivity /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/init-database"]
CMD ["--timeout", "120"]
