#!/usr/bin/env bash
# Stands in for a tool CMake did not find, so that the test that needs it fails loudly.
echo "FAIL: '$1' is not installed; run launch/setup.sh (Debian packages prometheus, jq, yq)" >&2
exit 1
