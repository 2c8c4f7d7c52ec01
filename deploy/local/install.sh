#!/usr/bin/env bash
# Install what `messagehub up` and the stack tests need on Debian 12, as root:
# Dovecot, PostgreSQL 15, Java 17 and Maven (Debian packages), the vmail user,
# the Kafka broker jars (deploy/local/kafka/libs) and the Python venv (.venv).
# The deploy tests also get promtool (Debian's prometheus package) and
# kustomize (built with `go install` into .venv/bin; skipped without Go).
# Safe to run again: each step is skipped when its result is already there.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
KAFKA_DIR="$HERE/kafka"
VENV="$REPO_ROOT/.venv"
KUSTOMIZE_VERSION=v5.8.1

PACKAGES=(
  dovecot-imapd
  postgresql-15
  openssl
  openjdk-17-jre-headless
  maven
  python3
  python3-venv
  iproute2      # ss, used by the stack tests
  util-linux    # runuser
  ca-certificates
  prometheus    # promtool, for the deploy tests; its server is kept stopped
  chromium-headless-shell  # the survey page test in a browser; about 65 MB
)

say() { printf 'install.sh: %s\n' "$*"; }
fail() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Debian's maintainer scripts do not start services while a policy-rc.d that
# exits 101 exists, so a fresh dovecot never listens on all interfaces, not even
# briefly. An existing policy file is left untouched.
TEMP_POLICY=""
remove_temp_policy() {
  if [[ -n "$TEMP_POLICY" ]]; then rm -f "$TEMP_POLICY"; fi
}
trap remove_temp_policy EXIT

install_packages() {
  local missing=() package
  for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
  done
  if (( ${#missing[@]} == 0 )); then
    say "Debian packages: all present"
    return
  fi

  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    TEMP_POLICY=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$TEMP_POLICY"
    chmod 0755 "$TEMP_POLICY"
  fi
  say "Debian packages: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  remove_temp_policy
  TEMP_POLICY=""
}

ensure_vmail_user() {
  if id vmail >/dev/null 2>&1; then
    say "vmail user: present"
    return
  fi
  # Dovecot stores mail as this user because it refuses to store it as root.
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmail
  say "vmail user: created"
}

# Print "address:port pid" for each TCP listener of the named program that
# is not bound to a loopback address.
exposed_listeners() {
  local program=$1
  ss -ltnpH 2>/dev/null | awk -v program="\"$program\"" '
    index($0, "((" program ",") {
      address = $4; sub(/:[0-9]+$/, "", address)
      if (address != "127.0.0.1" && address != "[::1]" && address !~ /^127\./) print $4
    }'
}

stop_packaged_dovecot() {
  if [[ -z "$(exposed_listeners dovecot)" ]]; then
    say "packaged dovecot: not listening beyond loopback"
  else
    say "packaged dovecot: listening on $(exposed_listeners dovecot | paste -sd' ' -), stopping it"
    if [[ -d /run/systemd/system ]]; then
      systemctl stop dovecot.service dovecot.socket || true
    else
      service dovecot stop || true
    fi
  fi

  # Under systemd the packaged service would start again at the next boot.
  if [[ -d /run/systemd/system ]] && systemctl is-enabled --quiet dovecot.service 2>/dev/null; then
    systemctl disable --quiet dovecot.service dovecot.socket 2>/dev/null || true
    say "packaged dovecot: disabled its systemd service"
  fi

  if [[ -n "$(exposed_listeners dovecot)" ]]; then
    fail "a dovecot still listens on $(exposed_listeners dovecot | paste -sd' ' -): stop it by hand (it is not part of the local stack)"
  fi
}

stop_exposed_postgresql_clusters() {
  # Debian's own cluster listens on localhost by default, which is fine. Only
  # clusters that were configured to listen on other interfaces are stopped.
  local exposed version cluster port status
  exposed=$(exposed_listeners postgres)
  if [[ -z "$exposed" ]]; then
    say "packaged postgresql: not listening beyond loopback"
    return
  fi

  while read -r version cluster port status _; do
    [[ "$status" == online* ]] || continue
    if grep -q ":$port\$" <<<"$exposed"; then
      say "packaged postgresql: cluster $version/$cluster listens beyond loopback on port $port, stopping it"
      pg_ctlcluster "$version" "$cluster" stop
    fi
  done < <(pg_lsclusters -h)

  if [[ -n "$(exposed_listeners postgres)" ]]; then
    fail "a postgres still listens on $(exposed_listeners postgres | paste -sd' ' -): stop it by hand (it is not part of the local stack)"
  fi
}

stop_packaged_prometheus() {
  # Only promtool is wanted. Under systemd the packaged server would start at
  # the next boot and listen on all interfaces.
  if [[ -d /run/systemd/system ]] && systemctl is-enabled --quiet prometheus.service 2>/dev/null; then
    systemctl disable --now --quiet prometheus.service 2>/dev/null || true
    say "packaged prometheus: disabled its systemd service (promtool is all the tests use)"
  fi
  if [[ -n "$(exposed_listeners prometheus)" ]]; then
    fail "a prometheus listens on $(exposed_listeners prometheus | paste -sd' ' -): stop it by hand (it is not part of the local stack)"
  fi
}

install_kustomize() {
  if [[ "$("$VENV/bin/kustomize" version 2>/dev/null)" == "$KUSTOMIZE_VERSION" ]]; then
    say "kustomize: $KUSTOMIZE_VERSION in .venv/bin"
    return
  fi
  if ! command -v go >/dev/null 2>&1; then
    say "kustomize: Go not found, skipped (the deploy tests that render manifests will skip)"
    return
  fi
  say "kustomize: building $KUSTOMIZE_VERSION with go install"
  GOBIN="$VENV/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ||
    fail "go install of kustomize $KUSTOMIZE_VERSION failed (output above): check access to the Go module proxy"
}

resolve_kafka_jars() {
  local pom_hash
  pom_hash=$(sha256sum "$KAFKA_DIR/pom.xml" | cut -d' ' -f1)
  if [[ -d "$KAFKA_DIR/libs" && "$(cat "$KAFKA_DIR/libs/.pom.sha256" 2>/dev/null)" == "$pom_hash" ]]; then
    say "Kafka jars: up to date in deploy/local/kafka/libs"
    return
  fi

  # copy-dependencies never deletes jars, so old versions would stay on the
  # classpath: resolve into an empty directory, then swap it in.
  say "Kafka jars: resolving with Maven"
  rm -rf "$KAFKA_DIR/libs.new"
  # Maven's output is shown on failure only: even -q -B prints colour codes.
  local mvn_log
  mvn_log=$(mktemp)
  if ! (cd "$KAFKA_DIR" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs.new) > "$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -f "$mvn_log"
    fail "Maven could not resolve the Kafka jars (output above): check the network access to Maven Central"
  fi
  rm -f "$mvn_log"
  compgen -G "$KAFKA_DIR/libs.new/kafka_2.13-*.jar" >/dev/null ||
    fail "Maven finished but no kafka_2.13 jar is in $KAFKA_DIR/libs.new: check deploy/local/kafka/pom.xml"
  printf '%s\n' "$pom_hash" > "$KAFKA_DIR/libs.new/.pom.sha256"
  rm -rf "$KAFKA_DIR/libs"
  mv "$KAFKA_DIR/libs.new" "$KAFKA_DIR/libs"
  say "Kafka jars: $(find "$KAFKA_DIR/libs" -name '*.jar' | wc -l) jars in deploy/local/kafka/libs"
}

setup_venv() {
  local python marker project_hash
  marker="$VENV/.pyproject.sha256"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python=$(command -v python3.11 || command -v python3) || fail "python3 not found"
    say "Python venv: creating .venv with $("$python" -V)"
    "$python" -m venv "$VENV"
  fi

  project_hash=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)
  if [[ "$(cat "$marker" 2>/dev/null)" == "$project_hash" ]]; then
    say "Python venv: up to date with pyproject.toml"
    return
  fi
  say "Python venv: installing messagehub with its test extras"
  (cd "$REPO_ROOT" && "$VENV/bin/python" -m pip install -q -e '.[test]')
  printf '%s\n' "$project_hash" > "$marker"
}

main() {
  [[ $EUID -eq 0 ]] || fail "run as root: it installs Debian packages and creates the vmail user"
  [[ -r /etc/debian_version ]] || fail "this script supports Debian 12 only"

  install_packages
  ensure_vmail_user
  stop_packaged_dovecot
  stop_exposed_postgresql_clusters
  stop_packaged_prometheus
  resolve_kafka_jars
  setup_venv
  install_kustomize
  say "done"
}

main "$@"
