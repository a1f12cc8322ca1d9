#!/usr/bin/env bash
# The container's entrypoint: mount the warehouse at NCCIDFS_MOUNTPOINT in the foreground, with settings
# from NCCIDFS_* variables (see nccidfs-common.sh) and any arguments appended as extra flags.
# nccidfs unmounts on SIGTERM, which is how the container is stopped.
set -euo pipefail
# shellcheck source=SCRIPTDIR/nccidfs-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/nccidfs-common.sh"

mountpoint=${NCCIDFS_MOUNTPOINT:-/mnt/nccid}
cache_dir=${NCCIDFS_CACHE_DIR:-/var/cache/nccidfs}

# A daemon that was killed (out of memory, node trouble) leaves a dead mount on the host path, and the
# new one would be refused. Nothing else mounts there, so clear it.
if nccidfs_is_mounted "$mountpoint"; then
    echo "nccidfs-entrypoint: clearing a mount left at $mountpoint" >&2
    fusermount3 -u -z "$mountpoint"
fi
mkdir -p "$mountpoint"   # nccidfs creates the cache directory itself, private to root
exec "${nccidfs_cmd[@]}" "$mountpoint" --foreground --cache-dir "$cache_dir" "${nccidfs_flags[@]}" "$@"
