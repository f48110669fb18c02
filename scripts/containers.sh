#!/usr/bin/env bash
# Make podman usable on this machine without changing anything global, and make a Python base image.
#
# Idempotent; prints `export NAME=value` lines, so use it as:  eval "$(scripts/containers.sh)"
# - writes containers.conf (runtime runc: crun fails on hybrid cgroups here; ulimits the host allows)
#   and storage.conf under $CONVEYOR_CONTAINERS_DIR (default ~/.cache/conveyor/containers);
# - builds localhost/conveyor-py-base:bookworm with debootstrap (no registry to pull from), and
#   caches it as an oci-archive beside those files, so a later run loads it in about a second.
# Needs (as root): podman runc debootstrap (`.ci/run` installs them).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
dir="${CONVEYOR_CONTAINERS_DIR:-$HOME/.cache/conveyor/containers}"
image="${CONVEYOR_BASE_IMAGE_NAME:-localhost/conveyor-py-base:bookworm}"
mkdir -p "$dir"
# Test workers start this at the same time: one writes the files and makes the base image, the others wait.
exec 9>"$dir/.lock"
flock 9

nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
cat > "$dir/containers.conf.tmp" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]
netns = "bridge"
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
CONF
mv "$dir/containers.conf.tmp" "$dir/containers.conf"
driver="${CONVEYOR_STORAGE_DRIVER:-overlay}"
# The run root (mounts, locks: state a reboot clears) is on /run, one per store: two stores sharing one
# overwrite each other's mount bookkeeping (two HOMEs on one machine, a CI run beside a developer's).
runroot="/run/conveyor-containers-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
cat > "$dir/storage.conf.tmp" <<CONF
[storage]
driver = "${driver}"
graphroot = "$dir/storage"
runroot = "${runroot}"
CONF
mv "$dir/storage.conf.tmp" "$dir/storage.conf"
export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
# overlay is fast, but not every kernel/container lets it mount: fall back to vfs (copies, slower).
if [ "$driver" = overlay ] && command -v podman >/dev/null && ! podman info >/dev/null 2>&1; then
    sed -i 's/^driver = .*/driver = "vfs"/' "$dir/storage.conf"
    sed -i "s|^graphroot = .*|graphroot = \"$dir/storage-vfs\"|" "$dir/storage.conf"
fi

for tool in podman runc; do
    command -v "$tool" >/dev/null || { echo "Error: $tool is not installed; apt-get install -y podman runc debootstrap" >&2; exit 1; }
done

archive="$dir/py-base-bookworm.oci.tar"
if ! podman image exists "$image" 2>/dev/null; then
    if [ -s "$archive" ]; then
        podman load -q -i "$archive" >/dev/null
        # an oci-archive keeps the tag as its annotation; make sure the name is right
        podman image exists "$image" || podman tag "$(podman images -q | head -n1)" "$image"
    else
        command -v debootstrap >/dev/null || { echo "Error: debootstrap is not installed; apt-get install -y debootstrap" >&2; exit 1; }
        mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
        mirror="${mirror:-http://deb.debian.org/debian}"
        rootfs="$(mktemp -d /var/tmp/conveyor-rootfs.XXXXXX)"
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >&2
        # Trim what a serving image never reads: docs, man pages, locales, apt lists and caches.
        rm -rf "$rootfs"/usr/share/{doc,man,info,locale,lintian,linda} "$rootfs"/var/lib/apt/lists/* \
               "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*
        find "$rootfs/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
        tar -C "$rootfs" -c . | podman import -q \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["python3"]' - "$image" >/dev/null
        podman save -q --format oci-archive -o "$archive.tmp" "$image"
        mv "$archive.tmp" "$archive"
    fi
fi
echo "export CONTAINERS_CONF='$CONTAINERS_CONF'"
echo "export CONTAINERS_STORAGE_CONF='$CONTAINERS_STORAGE_CONF'"
echo "export CONVEYOR_BASE_IMAGE='$image'"
