# Images for the two services of the activity pipeline, from one Dockerfile:
#
#   docker build --target ingest     -t activity-pipeline/ingest .
#   docker build --target aggregator -t activity-pipeline/aggregator .
#
# docker-compose.yml builds both. Both targets share the `build` and `runtime` stages, so the slow
# part (compiling librdkafka, about a minute on 2 cores) runs once and is cached until
# package.json or package-lock.json change.

# Debian 12 (bookworm) for build and runtime alike: the uWebSockets.js build in use
# (@trufflesuite/uws-js-unofficial) needs glibc 2.36+, and the native addons compiled in `build`
# must run against the same glibc and shared libraries in `runtime`.
# The patch version matches the Node.js on the development machines; bump both together.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# Loads both native addons; run after each step that could break them. uWebSockets.js is
# loaded by its binary's path on purpose: require('uWebSockets.js') does not throw on an
# incompatible binary (wrong glibc, ABI), it silently falls back to a slow pure-JS server.
ARG NATIVE_CHECK="require('@confluentinc/kafka-javascript'); const p = require('node:path'); require(p.join(p.dirname(require.resolve('uWebSockets.js')), '..', 'binaries', 'uws_' + process.platform + '_' + process.arch + '_' + process.versions.modules + '.node'))"

# ---------------------------------------------------------------------------------------------
# build: compile native addons and TypeScript, then drop dev dependencies.
# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build

# Toolchain and -dev libraries that librdkafka is built and linked against (the same list as
# deploy/local/install.sh), plus python3 for node-gyp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config python3 \
      libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so source edits do not invalidate the expensive npm ci layer.
COPY package.json package-lock.json ./

# CKJS_LINKING=dynamic: @confluentinc/kafka-javascript builds librdkafka against the system
#   libraries above instead of its bundled static copies (same as deploy/local/install.sh).
# npm_config_build_from_source=<package>: node-pre-gyp otherwise downloads the prebuilt,
#   statically linked binary from GitHub when the network allows, and CKJS_LINKING is then
#   ignored. Naming the package limits this to kafka-javascript (node-gyp-build packages only
#   react to "true"). npm may warn "Unknown env config"; the warning is harmless.
# npm_config_nodedir: node-gyp uses the headers shipped in the image instead of downloading
#   them, when the image has them (checked, so a slimmer base image still builds).
ENV CKJS_LINKING=dynamic \
    npm_config_build_from_source=@confluentinc/kafka-javascript
RUN if [ -f /usr/local/include/node/node.h ]; then export npm_config_nodedir=/usr/local; fi \
 && npm ci --no-audit --no-fund

# Fail here, not at container start, if a native addon does not load (see NATIVE_CHECK).
ARG NATIVE_CHECK
RUN node -e "$NATIVE_CHECK"

# Sources. The context is filtered by .dockerignore; copying the whole of it (rather than named
# folders) keeps the build working while optional folders in tsconfig.json's "include" (bench,
# deploy/local) are empty or absent: COPY of a missing path fails the build, git does not keep
# empty folders, and tsc only needs one include folder to match.
COPY . .

# Compile to dist/ (tsconfig.json: rootDir ".", outDir "dist"), and the dashboard page into
# dist/query/web as `make build` does, then remove dev dependencies; prune does not rebuild the
# native addons compiled above.
RUN node_modules/.bin/tsc -p tsconfig.json \
 && node_modules/.bin/tsc -p query/web/tsconfig.json \
 && cp query/web/index.html query/web/dashboard.css dist/query/web/ \
 && npm prune --omit=dev --no-audit --no-fund

# Drop what only the build needed, about 350 MB: librdkafka's source tree and object files,
# its static archives and headers (the addon links librdkafka.so.1 from build/deps via
# RUNPATH $ORIGIN/../deps), and the uWebSockets.js binaries for other platforms, CPU
# architectures and Node.js ABIs. The check then proves that what is left still loads.
RUN ckjs=node_modules/@confluentinc/kafka-javascript \
 && rm -rf "$ckjs/deps/librdkafka" "$ckjs/build/Release/obj.target" "$ckjs/build/Release/.deps" \
           "$ckjs/build/deps/include" "$ckjs/build/deps/pkgconfig" "$ckjs"/build/deps/*.a \
 && keep="uws_$(node -p process.platform)_$(node -p process.arch)_$(node -p process.versions.modules).node" \
 && find node_modules/uWebSockets.js/binaries -type f ! -name "$keep" -delete \
 && node -e "$NATIVE_CHECK"

# ---------------------------------------------------------------------------------------------
# runtime: only the shared libraries the native addons load, and the built app.
# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime

# Runtime halves of the -dev packages above (librdkafka links libssl, libsasl2, libzstd, liblz4,
# zlib and libcurl dynamically); ca-certificates for TLS to managed brokers or databases.
# jemalloc: glibc's malloc keeps the buffers a catch-up frees as fragmented heap (hundreds of MiB
# that never go back to the system); jemalloc returns them within seconds. Linked under one path
# for every architecture, preloaded for both services (docs/ARCHITECTURE.md, Performance).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libssl3 libsasl2-2 libzstd1 liblz4-1 zlib1g libcurl4 ca-certificates libjemalloc2 \
 && ln -s "$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2)" /usr/local/lib/libjemalloc.so.2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
ENV NODE_ENV=production \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true

# package.json is needed at run time: its "type": "module" makes Node load dist/**/*.js as ESM.
# Files stay owned by root, so the app (running as `node`) cannot modify its own code.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist

# Same load check, now against the runtime libraries only: a library missing from the
# apt-get line above fails the image build instead of the first container start.
ARG NATIVE_CHECK
RUN node -e "$NATIVE_CHECK"
# The preload is only a warning when its path is wrong: check that jemalloc is really in the process.
RUN node -e "require('fs').readFileSync('/proc/self/maps','utf8').includes('libjemalloc')||(console.error('jemalloc is not preloaded'),process.exit(1))"

# The official image's unprivileged user (uid 1000).
USER node

# Both services drain on SIGTERM (close listeners, flush, commit offsets). CMD is in exec form
# below, so Node is PID 1 and receives the signal itself (no shell in between).
STOPSIGNAL SIGTERM

# ---------------------------------------------------------------------------------------------
# ingest: HTTP server that produces events to Kafka/Redpanda.
# ---------------------------------------------------------------------------------------------
FROM runtime AS ingest
EXPOSE 8080
# Node itself does the HTTP check: the slim image has no curl or wget. /readyz answers non-2xx
# until the producer is connected and while draining. The port follows INGEST_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.INGEST_PORT||8080)+'/readyz',{signal:AbortSignal.timeout(3000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/ingest/main.js"]

# ---------------------------------------------------------------------------------------------
# query: the read API, the live stream and the dashboard page, from PostgreSQL.
# ---------------------------------------------------------------------------------------------
FROM runtime AS query
# The page is served from dist/query/web (built above); its source folder is not in the image.
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.QUERY_PORT||8082)+'/readyz',{signal:AbortSignal.timeout(3000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/query/main.js"]

# ---------------------------------------------------------------------------------------------
# aggregator: consumer + Piscina worker pool writing window totals to PostgreSQL.
# Last stage, so a plain `docker build .` without --target also produces this image.
# ---------------------------------------------------------------------------------------------
FROM runtime AS aggregator
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.AGGREGATOR_PORT||8081)+'/readyz',{signal:AbortSignal.timeout(3000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/aggregator/main.js"]
