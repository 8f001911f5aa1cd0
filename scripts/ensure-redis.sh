#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing: the store tests start their own on a free port.
# Without one they skip, or fail when VOXWIRE_REQUIRE_REDIS=1 (as in CI), and so does this script.
set -euo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
give_up() {
  echo "ensure-redis: $1; the Redis store tests will skip" >&2
  if [ "${VOXWIRE_REQUIRE_REDIS:-}" = 1 ]; then exit 1; fi
  exit 0
}
command -v apt-get >/dev/null || give_up "redis-server is missing and there is no apt-get (install Redis >= 7)"
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || give_up "redis-server is missing; run: apt-get install redis-server (as root)"
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure-redis: redis-server is missing: ${sudo[*]:+${sudo[*]} }apt-get install -y redis-server" >&2
if ! "${sudo[@]}" apt-get install -y redis-server; then
  echo "ensure-redis: install failed: ${sudo[*]:+${sudo[*]} }apt-get update, then install again" >&2
  "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y redis-server \
    || give_up "could not install redis-server"
fi
command -v redis-server >/dev/null || give_up "redis-server is still not on PATH after installing it"
echo "ensure-redis: installed $(redis-server --version)" >&2
