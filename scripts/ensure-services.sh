#!/usr/bin/env bash
# Installs Debian's redis-server and haproxy when they are missing: the store tests start their own
# Redis on a free port, the failover test its own HAProxy. Without one its tests skip, or fail when
# VOXWIRE_REQUIRE_REDIS=1 / VOXWIRE_REQUIRE_HAPROXY=1 (as in CI), and so does this script.
set -euo pipefail

sudo=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

# ensure COMMAND PACKAGE REQUIRE_VARIABLE WHAT
ensure() {
  local command=$1 package=$2 require=$3 what=$4
  command -v "$command" >/dev/null && return 0
  give_up() {
    echo "ensure-services: $1; $what will skip" >&2
    if [ "${!require:-}" = 1 ]; then exit 1; fi
    return 0
  }
  if ! command -v apt-get >/dev/null; then give_up "$command is missing and there is no apt-get"; return 0; fi
  if [ "$(id -u)" != 0 ] && [ ${#sudo[@]} = 0 ]; then
    give_up "$command is missing; run: apt-get install $package (as root)"
    return 0
  fi
  echo "ensure-services: $command is missing: ${sudo[*]:+${sudo[*]} }apt-get install -y $package" >&2
  if ! "${sudo[@]}" apt-get install -y "$package"; then
    echo "ensure-services: install failed: ${sudo[*]:+${sudo[*]} }apt-get update, then install again" >&2
    if ! { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "$package"; }; then
      give_up "could not install $package"
      return 0
    fi
  fi
  if ! command -v "$command" >/dev/null; then give_up "$command is still not on PATH after installing it"; return 0; fi
  echo "ensure-services: installed $package" >&2
}

ensure redis-server redis-server VOXWIRE_REQUIRE_REDIS "the Redis store tests"
ensure haproxy haproxy VOXWIRE_REQUIRE_HAPROXY "the failover test"
