#!/bin/sh
# Prepares a bare Debian or Ubuntu host for k3node: a dedicated login user that holds the
# operator's SSH public key and may use sudo without a password. Nothing else is changed: no
# packages, no SSH server settings, no k3s (k3node installs that).
#
# Usage, as root on the host (or piped through ssh):
#   sh bootstrap.sh --key "ssh-ed25519 AAAA... you@laptop" [--user k3node]
#   sh bootstrap.sh --key-file /tmp/operator.pub
#   ssh root@HOST sh -s -- --key "'$(cat ~/.ssh/id_ed25519.pub)'" < provision/bootstrap.sh
# Environment: K3NODE_USER and K3NODE_PUBLIC_KEY stand for --user and --key.
#
# Invariants:
# - Idempotent: a second run with the same arguments changes nothing and says so.
# - Every file is written to a temporary file beside its target, fsynced, then renamed over it.
# - The sudoers rule is checked with `visudo -cf` before it is put in place; a rule visudo rejects
#   never reaches /etc/sudoers.d (a broken sudoers file would lock every user out of sudo).
# - Errors go to stderr with what failed and what to do, and exit non-zero; nothing is changed
#   before every argument has been checked.
set -eu

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077

prog=bootstrap.sh
user=${K3NODE_USER:-k3node}
key=${K3NODE_PUBLIC_KEY:-}
key_file=
changes=0
tmp=

usage() {
  cat <<EOF
Usage: $prog --key "ssh-ed25519 AAAA... comment" [--user NAME]
       $prog --key-file PATH [--user NAME]
Creates the user NAME (default k3node) with the public key in ~/.ssh/authorized_keys and
passwordless sudo (/etc/sudoers.d/NAME). Run as root. A second run changes nothing.
Environment: K3NODE_USER (--user), K3NODE_PUBLIC_KEY (--key).
EOF
}

die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

say() {
  printf '%s: %s\n' "$prog" "$*"
}

changed() {
  changes=$((changes + 1))
  say "$*"
}

cleanup() {
  if [ -n "$tmp" ]; then
    rm -f "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- arguments ----
while [ $# -gt 0 ]; do
  case $1 in
    --user) [ $# -ge 2 ] || die "--user needs a name"; user=$2; shift 2 ;;
    --user=*) user=${1#--user=}; shift ;;
    --key) [ $# -ge 2 ] || die "--key needs a public key"; key=$2; shift 2 ;;
    --key=*) key=${1#--key=}; shift ;;
    --key-file) [ $# -ge 2 ] || die "--key-file needs a path"; key_file=$2; shift 2 ;;
    --key-file=*) key_file=${1#--key-file=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (it creates a user and writes /etc/sudoers.d): run it with sudo, or as root over ssh"
fi

if [ -n "$key_file" ]; then
  [ -z "$key" ] || die "give the key once: --key or --key-file, not both"
  [ -r "$key_file" ] || die "cannot read the key file $key_file"
  key=$(cat "$key_file")
fi
if [ -z "$key" ]; then
  usage >&2
  die "no public key given: pass --key \"\$(cat ~/.ssh/id_ed25519.pub)\", --key-file PATH or set K3NODE_PUBLIC_KEY"
fi

case $user in
  root) die "--user root: the point is a dedicated user; root needs no bootstrap" ;;
esac
# useradd's portable names (Debian's NAME_REGEX without upper case): no '.', which would also make
# sudo skip the file /etc/sudoers.d/NAME.
if ! printf '%s' "$user" | grep -Eq '^[a-z_][a-z0-9_-]{0,31}$'; then
  die "invalid user name '$user': use 1-32 lowercase letters, digits, '_' or '-', starting with a letter or '_'"
fi

for cmd in useradd usermod getent visudo ssh-keygen; do
  command -v "$cmd" >/dev/null 2>&1 || case $cmd in
    visudo) die "visudo not found: sudo is not installed (apt-get install sudo)" ;;
    ssh-keygen) die "ssh-keygen not found, needed to check the key (apt-get install openssh-client)" ;;
    *) die "$cmd not found (apt-get install passwd)" ;;
  esac
done

# ---- the key ----
# One line of authorized_keys format, checked by OpenSSH's own parser. A private key pasted by
# mistake is refused without repeating any of it.
case $key in
  *PRIVATE\ KEY*) die "that is a private key: give the public one (the .pub file), and keep the private key to yourself" ;;
esac
newline='
'
case $key in
  *"$newline"*) die "the public key must be one line (one key per run)" ;;
esac
keycheck=$(mktemp)
tmp=$keycheck
printf '%s\n' "$key" >"$keycheck"
if ! ssh-keygen -l -f "$keycheck" >/dev/null 2>&1; then
  rm -f "$keycheck"
  tmp=
  shown=$(printf '%s' "$key" | cut -c1-40)
  die "not a valid SSH public key: '$shown...'; give the contents of a .pub file (ssh-ed25519 AAAA... comment)"
fi
fingerprint=$(ssh-keygen -l -f "$keycheck" | awk '{ print $2 }')
rm -f "$keycheck"
tmp=
# The key's identity is its type and base64 blob (the fields after any options): a comment that
# differs does not make it another key.
key_id=$(printf '%s\n' "$key" | awk '{ for (i = 1; i < NF; i++) if ($i ~ /^(ssh-|ecdsa-|sk-)/) { print $i " " $(i + 1); exit } }')
[ -n "$key_id" ] || die "cannot find the key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-...) in the public key"

# ---- helpers for atomic writes ----
# install_file TARGET MODE OWNER:GROUP: moves the temp file $tmp (already written) into place.
install_file() {
  chmod "$2" "$tmp"
  chown "$3" "$tmp"
  sync "$tmp"
  mv -f "$tmp" "$1"
  tmp=
  sync "$(dirname "$1")"
}

# ---- the user ----
if getent passwd "$user" >/dev/null; then
  say "user $user exists"
else
  shell=/bin/sh
  [ -x /bin/bash ] && shell=/bin/bash
  useradd --create-home --user-group --shell "$shell" --comment "k3node operator" "$user"
  changed "created user $user (shell $shell)"
fi
# A new account's password is locked ('!'); OpenSSH without PAM refuses key logins to locked
# accounts. '*' means "no password can match" without locking the account.
shadow=$(getent shadow "$user" | cut -d: -f2)
case $shadow in
  '!' | '!!' | '!*' | '')
    usermod -p '*' "$user"
    changed "set $user's password field to '*' (key logins only, no password)"
    ;;
esac

home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
if [ -z "$home" ] || [ ! -d "$home" ]; then
  die "the home directory of $user ('$home') does not exist"
fi

# ---- authorized_keys ----
ssh_dir=$home/.ssh
keys=$ssh_dir/authorized_keys
if [ ! -d "$ssh_dir" ]; then
  mkdir -m 700 "$ssh_dir"
  chown "$user:$group" "$ssh_dir"
  changed "created $ssh_dir"
fi
if [ -L "$ssh_dir" ] || [ -L "$keys" ]; then
  die "$ssh_dir or $keys is a symbolic link: refusing to write through it"
fi
mode=$(stat -c %a "$ssh_dir")
owner=$(stat -c %U "$ssh_dir")
if [ "$mode" != 700 ] || [ "$owner" != "$user" ]; then
  chmod 700 "$ssh_dir"
  chown "$user:$group" "$ssh_dir"
  changed "set $ssh_dir to mode 700, owner $user (sshd ignores keys in a directory others can write)"
fi
present=no
if [ -f "$keys" ] && awk -v id="$key_id" '
    { for (i = 1; i < NF; i++) if ($i " " $(i + 1) == id) found = 1 }
    END { exit !found }' "$keys"; then
  present=yes
fi
if [ "$present" = no ]; then
  tmp=$(mktemp "$ssh_dir/.authorized_keys.XXXXXX")
  if [ -f "$keys" ]; then
    cat "$keys" >"$tmp"
    # Keep the existing last line a line of its own ($(...) drops a final newline, so a file that
    # ends with one gives an empty string).
    if [ -n "$(tail -c 1 "$keys")" ]; then
      echo >>"$tmp"
    fi
  fi
  printf '%s\n' "$key" >>"$tmp"
  install_file "$keys" 600 "$user:$group"
  changed "added the key $fingerprint to $keys"
else
  say "the key $fingerprint is already in $keys"
fi
mode=$(stat -c %a "$keys")
owner=$(stat -c %U "$keys")
if [ "$mode" != 600 ] || [ "$owner" != "$user" ]; then
  chmod 600 "$keys"
  chown "$user:$group" "$keys"
  changed "set $keys to mode 600, owner $user"
fi

# ---- sudo ----
sudoers=/etc/sudoers.d/$user
rule="$user ALL=(ALL) NOPASSWD:ALL"
expected="# Written by k3node's provision/bootstrap.sh: k3node runs its host agent through sudo -n.
$rule"
if [ -f "$sudoers" ] && [ "$(cat "$sudoers")" = "$expected" ] &&
  [ "$(stat -c '%a %U %G' "$sudoers")" = '440 root root' ]; then
  say "$sudoers is in place"
else
  # The temp name contains a '.': sudo skips such files in /etc/sudoers.d, so a half-written rule
  # is never read.
  tmp=$(mktemp "/etc/sudoers.d/.$user.XXXXXX")
  printf '%s\n' "$expected" >"$tmp"
  chmod 440 "$tmp"
  if ! out=$(visudo -cf "$tmp" 2>&1); then
    die "visudo rejects the rule for $user, nothing installed: $out"
  fi
  install_file "$sudoers" 440 root:root
  changed "installed $sudoers ($rule), checked with visudo"
fi
if ! grep -Eq '^[@#]includedir[[:space:]]+/etc/sudoers.d' /etc/sudoers; then
  die "/etc/sudoers does not include /etc/sudoers.d, so $sudoers has no effect; add '@includedir /etc/sudoers.d' with visudo"
fi

# ---- proof ----
# As the user, sudo must work without a password: what k3node checks with `sudo -n true`.
if ! su -s /bin/sh -c 'sudo -n true' "$user" >/dev/null 2>&1; then
  die "$user cannot run sudo without a password although $sudoers is in place; check /etc/sudoers (visudo -c)"
fi

if [ "$changes" -eq 0 ]; then
  say "nothing to change: $user, its key and its sudo rule were already in place"
else
  say "done: $changes change(s); $user can log in with the key and use sudo without a password"
fi
