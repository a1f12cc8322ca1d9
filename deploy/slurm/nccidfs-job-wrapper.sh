#!/usr/bin/env bash
# Run a command with the NCCID warehouse mounted on this node, then unmount:
#
#   srun --ntasks-per-node=1 nccidfs-job-wrapper.sh sh -c 'python train.py --data "$NCCIDFS_MOUNTPOINT/xray"'
#
# - A mount at NCCIDFS_MOUNTPOINT that this wrapper did not make (the node's systemd unit, say) is used
#   as it is and left alone.
# - Otherwise the first wrapper on the node mounts, each wrapper holds a shared lock while its command
#   runs, and the last one out unmounts. The locks are flock(2)'s, so a killed wrapper never holds one.
# - The cache is per node and per user and kept between jobs (NCCIDFS_CACHE_DIR). The daemon holds an
#   exclusive lock on it; if another daemon holds it (another job with a private /tmp), this one uses a
#   cache of its own under NCCIDFS_STATE_DIR, removed on unmount.
#
# Settings: NCCIDFS_MOUNTPOINT (default $NCCIDFS_STATE_DIR/mnt), NCCIDFS_STATE_DIR (default
# ${TMPDIR:-/tmp}/nccidfs-UID: locks, daemon log), NCCIDFS_CACHE_DIR (default /var/tmp/nccidfs-cache-UID),
# NCCIDFS_CMD (how to run nccidfs), and the NCCIDFS_* mount settings of ../nccidfs-common.sh.
# The command sees NCCIDFS_MOUNTPOINT; the wrapper exits with the command's status.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../nccidfs-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../nccidfs-common.sh"

if [ $# -eq 0 ]; then
    echo "usage: nccidfs-job-wrapper.sh COMMAND [ARG...]" >&2
    exit 2
fi
uid=$(id -u)
state=${NCCIDFS_STATE_DIR:-${TMPDIR:-/tmp}/nccidfs-$uid}
(umask 077 && mkdir -p "$state")
NCCIDFS_MOUNTPOINT=$(realpath -m "${NCCIDFS_MOUNTPOINT:-$state/mnt}")
export NCCIDFS_MOUNTPOINT
cache_dir=${NCCIDFS_CACHE_DIR:-/var/tmp/nccidfs-cache-$uid}
ours="$state/mounted"   # holds "MOUNTPOINT CACHE_DIR" while a mount made here is up

exec {mount_lock}>"$state/mount.lock"   # taken to mount or unmount
exec {users_lock}>"$state/users.lock"   # shared by every wrapper whose command is running

start_daemon() {   # CACHE_DIR: nccidfs in the background; exits 75 if another daemon holds CACHE_DIR
    # Recorded first, so that a wrapper stopped during the mount still undoes it.
    echo "$NCCIDFS_MOUNTPOINT $1" > "$ours"
    mkdir -p "$(dirname "$1")"   # nccidfs creates the cache directory itself, private to the user
    # flock(1) hands its lock to nccidfs, whose daemon holds it until it exits. The daemon must not
    # hold the wrapper's own locks.
    flock -n -E 75 "$1.lock" "${nccidfs_cmd[@]}" "$NCCIDFS_MOUNTPOINT" --cache-dir "$1" \
        --log-file "$state/nccidfs.log" "${nccidfs_flags[@]}" {mount_lock}>&- {users_lock}>&-
}

mount_warehouse() {
    mkdir -p "$NCCIDFS_MOUNTPOINT"
    local status=0
    start_daemon "$cache_dir" || status=$?
    if [ "$status" -eq 75 ]; then
        echo "nccidfs-job-wrapper: $cache_dir is in use by another nccidfs; using a cache of this job's own" >&2
        start_daemon "$state/cache"
    elif [ "$status" -ne 0 ]; then
        exit "$status"
    fi
}

unmount_warehouse() {
    local mountpoint cache
    read -r mountpoint cache < "$ours"
    if nccidfs_is_mounted "$mountpoint"; then
        fusermount3 -u "$mountpoint" 2>/dev/null || fusermount3 -u -z "$mountpoint"
    fi
    # The daemon drops the cache lock when it has exited and written its cache index.
    flock -w 30 "$cache.lock" true || echo "nccidfs-job-wrapper: the daemon did not exit within 30 s" >&2
    if [ "$cache" = "$state/cache" ]; then rm -rf "$cache" "$cache.lock"; fi
    rm -f "$ours"
}

finish() {
    local status=$?
    flock -u "$users_lock"
    flock "$mount_lock"
    if [ -e "$ours" ] && flock -n "$users_lock"; then unmount_warehouse; fi
    exit "$status"
}

trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
flock "$mount_lock"
if [ -e "$ours" ]; then
    read -r mounted _ < "$ours"
    if ! stat "$mounted/" > /dev/null 2>&1; then
        # Left by a wrapper killed with its daemon: clear it and mount afresh.
        if nccidfs_is_mounted "$mounted"; then fusermount3 -u -z "$mounted"; fi
        rm -f "$ours"
    fi
fi
if [ -e "$ours" ]; then
    NCCIDFS_MOUNTPOINT=$mounted   # mounted by another wrapper of this user on this node
elif nccidfs_is_mounted "$NCCIDFS_MOUNTPOINT"; then
    echo "nccidfs-job-wrapper: using the mount at $NCCIDFS_MOUNTPOINT as it is" >&2
else
    mount_warehouse
fi
flock -s "$users_lock"
flock -u "$mount_lock"

"$@"
