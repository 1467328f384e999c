#!/usr/bin/env bash
# Builds the root filesystem every lab host boots from (see ../shared/lab.md): Debian bookworm by
# default; `base-image.sh bullseye` builds the older host some scenarios need (glibc 2.31, as on
# Debian 11, Ubuntu 20.04, RHEL 8: the hosts a dynamically linked k3node cannot run on).
# Idempotent: a finished image carries a stamp; a half-built one is thrown away and rebuilt.
# Bump LAB_BASE_VERSION when the package list or the users below change.
set -euo pipefail

LAB_BASE_VERSION=3
SUITE=${1:-bookworm}
CACHE=${K3NODE_LAB_CACHE:-/var/cache/k3node-lab}
case "$SUITE" in
  bookworm)
    BASE="$CACHE/base-v$LAB_BASE_VERSION"
    PACKAGES=openssh-server,systemd,systemd-sysv,dbus,iproute2,sudo,kmod,procps,containerd,runc,etcd-server,etcd-client,prometheus-node-exporter ;;
  bullseye)
    BASE="$CACHE/base-bullseye-v$LAB_BASE_VERSION"
    PACKAGES=openssh-server,systemd,systemd-sysv,dbus,iproute2,sudo,kmod,procps ;;
  *) echo "lab base image: unknown suite $SUITE (bookworm or bullseye)" >&2; exit 2 ;;
esac
STAMP="$BASE/.k3node-lab-base"

if [ -f "$STAMP" ]; then
  echo "lab base image: $BASE (cached)"
  exit 0
fi

for cmd in debootstrap chroot; do
  command -v "$cmd" >/dev/null || { echo "lab base image: $cmd is missing (apt-get install debootstrap)" >&2; exit 1; }
done

mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$CACHE"
work="$BASE.partial"
rm -rf "$work"
echo "lab base image: debootstrap $SUITE from $mirror into $work (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" \
  "$SUITE" "$work" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
    echo "lab base image: debootstrap failed, last lines of $CACHE/debootstrap.log:" >&2
    tail -20 "$CACHE/debootstrap.log" >&2
    exit 1
  }

# Host keys are made per host by the harness, so that each host has its own identity.
rm -f "$work"/etc/ssh/ssh_host_*
# An empty machine-id would make every host share the one nspawn derives; the harness writes one per host.
: >"$work/etc/machine-id"

# Users the transport tests log in as: one with passwordless sudo, one whose sudo asks for a password.
chroot "$work" useradd --create-home --shell /bin/bash ops
chroot "$work" useradd --create-home --shell /bin/bash pw
echo 'pw:lab-sudo-password' | chroot "$work" chpasswd
echo 'ops ALL=(ALL) NOPASSWD:ALL' >"$work/etc/sudoers.d/ops"
echo 'pw ALL=(ALL) ALL' >"$work/etc/sudoers.d/pw"
chmod 0440 "$work/etc/sudoers.d/ops" "$work/etc/sudoers.d/pw"

mkdir -p "$work/etc/ssh/sshd_config.d"
cat >"$work/etc/ssh/sshd_config.d/lab.conf" <<'CONF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
CONF

# containerd is there for the k3s stand-in, which starts its own instance at k3s's socket, as k3s
# does; a system containerd running beside it would be what preflight calls a conflicting runtime.
chroot "$work" systemctl disable containerd.service >/dev/null 2>&1 || true
# etcd is there for the stand-in's HA servers, which run it as k3s embeds it (on 2379/2380): Debian's
# own etcd service would hold those ports. node_exporter is the benchmarks' footprint anchor, started
# by them when they need it.
chroot "$work" systemctl disable etcd.service prometheus-node-exporter.service >/dev/null 2>&1 || true

# Nothing in a lab host needs a login console or timers; fewer units make boots faster.
for unit in console-getty.service getty@.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  chroot "$work" systemctl mask "$unit" >/dev/null 2>&1 || true
done

chroot "$work" apt-get clean
date -u +%FT%TZ >"$work/.k3node-lab-base"
mv "$work" "$BASE"
echo "lab base image: built $BASE"
