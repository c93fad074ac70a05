#!/usr/bin/env bash
# Source this on a machine without apt access (the GPU machine) before configuring:
#   source launch/device-deps.sh [DEB_DIR]
# For each build dependency whose headers are missing from the system, unpacks the Debian 12
# .deb files carried in DEB_DIR (default .device/debs) with `dpkg -x` into .device/prefix — never
# into / — and points CMake and pkg-config at them.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
debs=${1:-$root/.device/debs}
prefix=$root/.device/prefix
mkdir -p "$prefix"
need() {  # need HEADER DEB_PATTERN...
  local header=$1; shift
  if [ -e "/usr/include/$header" ] || [ -e "/usr/local/include/$header" ]; then return; fi
  for pattern in "$@"; do
    for deb in "$debs"/$pattern; do
      [ -e "$deb" ] && dpkg -x "$deb" "$prefix"
    done
  done
  echo "device-deps: $header from $(cd "$debs" && ls $* 2>/dev/null | tr '\n' ' ')" >&2
}
need yaml-cpp/yaml.h 'libyaml-cpp*.deb'
need pcre2.h 'libpcre2-*.deb'
need prometheus/registry.h 'prometheus-cpp-dev*.deb' 'libprometheus-cpp-*.deb'
# dshpc links prometheus-cpp's core only: the pull (civetweb) and push (curl) parts' dependencies
# are not on the GPU machine, so the unpacked package config does not look for them.
config=$prefix/usr/lib/x86_64-linux-gnu/cmake/prometheus-cpp/prometheus-cpp-config.cmake
if [ -e "$config" ]; then
  sed -i -E 's/set\((PROMETHEUS_CPP_ENABLE_(PULL|PUSH)) ON\)/set(\1 OFF)/' "$config"
fi
# pkg-config files from the debs name prefix=/usr; rewrite them to the unpacked location.
for pc in "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do
  [ -e "$pc" ] && sed -i "s|^prefix=/usr\$|prefix=$prefix/usr|" "$pc"
done
export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
