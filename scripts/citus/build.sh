#!/usr/bin/env bash
# Builds and installs Citus 13.2.2 into Debian's PostgreSQL 15, once: the build is cached in
# .citus/ (git-ignored) and skipped when citus.so is installed and the stamp holds the sha256 of
# the tarball it was built from; a different tarball (a patched one) is built again.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
tarball="${CITUS_TARBALL:-$repo/../shared/vendor/citus-13.2.2.tar.gz}"
cache="$repo/.citus"
pg_config=/usr/lib/postgresql/15/bin/pg_config
stamp="$cache/installed-13.2.2"

if [[ ! -f "$tarball" ]]; then
  echo "citus: no Citus source at $tarball; set CITUS_TARBALL to citus-13.2.2.tar.gz (../shared/vendor/ of the main checkout)" >&2
  exit 1
fi
sha="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ -f /usr/lib/postgresql/15/lib/citus.so && "$(cat "$stamp" 2>/dev/null)" == "$sha" ]]; then
  exit 0
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Debian's packages only; each is installed once, so a second run costs nothing.
deps=(postgresql-15 postgresql-server-dev-15 liblz4-dev libzstd-dev libkrb5-dev libssl-dev
  libxslt1-dev libselinux1-dev libpam0g-dev libcurl4-openssl-dev flex autoconf make gcc)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "citus: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

mkdir -p "$cache"
src="$cache/citus-13.2.2"
# The configured source is reused only if it came from this tarball (a build that failed halfway
# resumes); the sha256 is written once configure has run.
if [[ ! -f "$src/Makefile.global" || "$(cat "$src/.tarball-sha256" 2>/dev/null)" != "$sha" ]]; then
  rm -rf "$src"
  tar -xzf "$tarball" -C "$cache"
  (cd "$src" && PG_CONFIG=$pg_config ./configure --without-libcurl >"$cache/configure.log")
  echo "$sha" >"$src/.tarball-sha256"
fi
echo "citus: building (a few minutes on 2 cores; log in .citus/build.log)" >&2
# with_llvm=no: no JIT bitcode, which would double the build for a test dependency.
(cd "$src" && make -j2 with_llvm=no >"$cache/build.log" 2>&1 && as_root make install with_llvm=no >>"$cache/build.log" 2>&1)
echo "$sha" >"$stamp"
