#!/usr/bin/env bash
# Make the secrets of the compose fleet, each a file in secrets/ (git-ignored):
#   minio_root_user, minio_root_password      MinIO's administrator (used by minio-init only)
#   s3_access_key_id, s3_secret_access_key    Berth's own MinIO user, limited to the bucket
#   redis_password, redis_users.acl           Berth's Redis ACL user (the default user is off)
#   htpasswd                                  registry users: one, "admin"
#   admin_password                            admin's password, for `docker login`
#
# Usage: gen-secrets.sh [--out DIR] [--force]
#   --out DIR   where to write (default: secrets/ beside this script)
#   --force     replace existing files (otherwise each existing file is kept)
#
# Passwords are random hex (nothing to escape in URLs or shells), written
# without a trailing newline. The
# htpasswd entry is SHA-512 crypt from `openssl passwd -6`, a format Berth
# accepts; `berth user hash NAME` makes argon2id entries to add more users.
# Like gen-certs.sh: the directory is 0700, the files the containers mount
# 0644 (the containers run as other users than yours), admin_password 0600.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/secrets"
force=false
while (($#)); do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --force) force=true; shift ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gen-secrets.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v openssl >/dev/null || { echo "gen-secrets.sh: openssl is missing (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$out"
chmod 0700 "$out"

# put NAME MODE VALUE: write the file unless it exists (or --force).
put() {
    if $force || [[ ! -s "$out/$1" ]]; then
        printf '%s' "$3" >"$out/$1"
    fi
    chmod "$2" "$out/$1"
}
random() { openssl rand -hex "$1"; }
value() { tr -d '\n' <"$out/$1"; }

put minio_root_user 0644 "berth-admin"
put minio_root_password 0644 "$(random 24)"
put s3_access_key_id 0644 "berth"
put s3_secret_access_key 0644 "$(random 24)"
put redis_password 0644 "$(random 24)"
put admin_password 0600 "$(random 16)"

# Derived files follow their sources, so they are always rewritten.
redis_hash="$(value redis_password | openssl dgst -sha256 -r | cut -d' ' -f1)"
cat >"$out/redis_users.acl" <<ACL
user default off
user berth on #$redis_hash resetkeys ~berth:* resetchannels &berth:* +@all -@dangerous
ACL
chmod 0644 "$out/redis_users.acl"
if $force || [[ ! -s "$out/htpasswd" ]]; then
    printf 'admin:%s\n' "$(value admin_password | openssl passwd -6 -stdin)" >"$out/htpasswd"
fi
chmod 0644 "$out/htpasswd"
echo "gen-secrets.sh: secrets in $out; log in as admin with the password in $out/admin_password" >&2
