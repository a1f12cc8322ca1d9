#!/usr/bin/env bash
# Slurm Epilog (run as root on each node after every job): keeps the per-user nccidfs caches of this node
# under one budget shared by all users. While the caches together hold more than NCCIDFS_NODE_CACHE_BUDGET
# (default 500G), the one used least recently is emptied with `nccidfs cache clear`, which refuses a
# cache that a running daemon holds (it is skipped) and any directory that is not an nccidfs cache.
#
# Install: Epilog=/opt/nccidfs/deploy/slurm/nccidfs-epilog.sh in slurm.conf (or call it from your epilog).
# Settings: NCCIDFS_NODE_CACHE_BUDGET (bytes or K/M/G/T), NCCIDFS_CACHE_GLOB (the wrapper's caches,
# default /var/tmp/nccidfs-cache-*), NCCIDFS_CMD (how to run nccidfs). It never fails the job: errors
# go to stderr, which slurmd logs.
set -uo pipefail

budget=${NCCIDFS_NODE_CACHE_BUDGET:-500G}
read -r -a nccidfs_cmd <<< "${NCCIDFS_CMD:-nccidfs}"
pattern=${NCCIDFS_CACHE_GLOB:-/var/tmp/nccidfs-cache-*}

bytes() {   # SIZE with a K/M/G/T suffix (powers of 1024), as nccidfs reads --cache-size
    numfmt --from=iec "${1%B}"
}

limit=$(bytes "$budget") || { echo "nccidfs-epilog: bad NCCIDFS_NODE_CACHE_BUDGET $budget" >&2; exit 0; }
# Caches by last use (the lock file is rewritten by each daemon that takes it), oldest first.
mapfile -t caches < <(for dir in $pattern; do
    if [ -d "$dir" ] && [ ! -L "$dir" ]; then stat -c '%Y %n' "$dir/lock" 2>/dev/null || echo "0 $dir"; fi
done | sort -n | sed 's#/lock$##' | cut -d' ' -f2-)
[ "${#caches[@]}" -gt 0 ] || exit 0
total=$(du -sbc "${caches[@]}" 2>/dev/null | tail -n1 | cut -f1)
for cache in "${caches[@]}"; do
    [ "$total" -gt "$limit" ] || break
    size=$(du -sb "$cache" 2>/dev/null | cut -f1)
    if "${nccidfs_cmd[@]}" cache clear --cache-dir "$cache" >/dev/null; then
        total=$((total - size + $(du -sb "$cache" 2>/dev/null | cut -f1)))
    fi
done
exit 0
