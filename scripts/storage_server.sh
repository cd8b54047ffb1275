#!/usr/bin/env bash
# The real Supabase Storage server on loopback, through devstack.storage_server.
#
# Usage:
#   bash scripts/storage_server.sh build                       # build once into the cache
#   eval "$(bash scripts/storage_server.sh start [--instance DIR])"   # start, export its env
#   eval "$(bash scripts/storage_server.sh env [--instance DIR])"     # export a running one's env
#   bash scripts/storage_server.sh stop [--instance DIR]       # stop what that start started
#
# The cache is $GENJOBS_STORAGE_CACHE (default .genjobs/cache), the tarball
# $GENJOBS_STORAGE_TARBALL (default ../shared/vendor/supabase-storage-1.70.6.tar.gz), the
# instance folder --instance, else $GENJOBS_STORAGE_INSTANCE, else .genjobs/storage.
# Only export lines go to stdout; progress goes to stderr.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m devstack.storage_server "$@"
