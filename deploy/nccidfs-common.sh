# shellcheck shell=bash disable=SC2034  # the variables set here are used by the scripts that source it
# Sourced by entrypoint.sh and slurm/nccidfs-job-wrapper.sh: what both need, in one place.
#
# nccidfs_flags: the mount flags named by NCCIDFS_* variables, the names that systemd/nccidfs.env uses.
# A variable that is unset or empty adds no flag, so nccidfs's own defaults apply. NCCIDFS_OPTIONS is
# split into words, as the systemd unit splits it. The mount point and the cache directory are left to
# the caller, which picks its own defaults for them.

nccidfs_flags=()

_nccidfs_flag() {
    if [ -n "${2:-}" ]; then nccidfs_flags+=("$1" "$2"); fi
}

_nccidfs_flag --bucket "${NCCIDFS_BUCKET:-}"
_nccidfs_flag --prefix "${NCCIDFS_PREFIX:-}"
_nccidfs_flag --region "${NCCIDFS_REGION:-}"
_nccidfs_flag --profile "${NCCIDFS_PROFILE:-}"
_nccidfs_flag --cache-size "${NCCIDFS_CACHE_SIZE:-}"
_nccidfs_flag --listing-ttl "${NCCIDFS_LISTING_TTL:-}"
read -r -a _nccidfs_options <<< "${NCCIDFS_OPTIONS:-}"
nccidfs_flags+=("${_nccidfs_options[@]}")

# nccidfs_cmd: how to run nccidfs, e.g. NCCIDFS_CMD="python3 -m nccidfs" (default: nccidfs on PATH).
read -r -a nccidfs_cmd <<< "${NCCIDFS_CMD:-nccidfs}"

# True if PATH (absolute, as /proc/self/mounts spells it) is a mount point, dead or alive. A FUSE mount
# whose daemon died still counts, and stat(2) on it fails, so the mount table is read instead.
nccidfs_is_mounted() {
    awk -v path="$1" '$2 == path { found = 1 } END { exit !found }' /proc/self/mounts
}
