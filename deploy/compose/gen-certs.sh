#!/usr/bin/env bash
# Make the internal PKI of the compose fleet with openssl:
#   ca.crt, ca.key          the internal CA (reused when present)
#   lb.pem                  the load balancer's server certificate + key (clients see it)
#   lb-client.pem           the load balancer's client certificate + key (replicas require it)
#   berth-N.crt, berth-N.key  replica N's server certificate (DNS name berth-N)
#   mesh-ca.crt, mesh-ca.key  the replica mesh's own CA (reused when present):
#                           any certificate it signs is a peer, so it signs
#                           only the replicas' mesh certificates
#   mesh-N.crt, mesh-N.key  replica N's mesh certificate (DNS name berth-mesh,
#                           server and client use)
#
# Usage: gen-certs.sh [--out DIR] [--replicas N] [--host NAME]...
#   --out DIR       where to write (default: certs/ beside this script; git-ignored)
#   --replicas N    how many replicas (default 3)
#   --host NAME     extra DNS name of the load balancer (default: localhost and 127.0.0.1 only)
#
# The CA is kept across runs (so clients that trust it keep working); the
# leaf certificates are issued anew each time. The directory is 0700; the
# files the containers mount are 0644, because the containers run as other
# users than yours (65532 for berth, 99 for haproxy) and bind mounts keep the
# host's modes. Only ca.key stays 0600: no container needs it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/certs"
replicas=3
hosts=()
while (($#)); do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --replicas) replicas="$2"; shift 2 ;;
        --host) hosts+=("$2"); shift 2 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gen-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$replicas" =~ ^[1-9][0-9]*$ ]] || { echo "gen-certs.sh: --replicas wants a positive number" >&2; exit 2; }
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is missing (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$out"
chmod 0700 "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# issue NAME PROFILE SAN [CA]: a P-256 key and a certificate signed by the
# CA (default ca, or mesh-ca). PROFILE is an extendedKeyUsage value
# (serverAuth, clientAuth or both); SAN an openssl subjectAltName value.
issue() {
    local name="$1" eku="$2" san="$3" ca="${4:-ca}"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $eku"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid:always"
        [[ -n "$san" ]] && echo "subjectAltName = $san"
    } >"$work/$name.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$out/$name.key" -out "$work/$name.csr" -subj "/O=Berth compose/CN=$name" 2>/dev/null
    openssl x509 -req -in "$work/$name.csr" -CA "$out/$ca.crt" -CAkey "$out/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 397 -sha256 \
        -extfile "$work/$name.ext" -out "$out/$name.crt" 2>/dev/null
    chmod 0644 "$out/$name.key" "$out/$name.crt"
}

if [[ ! -s "$out/ca.crt" || ! -s "$out/ca.key" ]]; then
    echo "gen-certs.sh: making a new CA in $out" >&2
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$out/ca.key" -out "$out/ca.crt" -days 3650 -sha256 \
        -subj "/O=Berth compose/CN=Berth compose internal CA" \
        -addext "basicConstraints = critical, CA:TRUE, pathlen:0" \
        -addext "keyUsage = critical, keyCertSign, cRLSign" \
        -addext "subjectKeyIdentifier = hash" 2>/dev/null
    chmod 0600 "$out/ca.key"
    chmod 0644 "$out/ca.crt"
fi

if [[ ! -s "$out/mesh-ca.crt" || ! -s "$out/mesh-ca.key" ]]; then
    echo "gen-certs.sh: making a new mesh CA in $out" >&2
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$out/mesh-ca.key" -out "$out/mesh-ca.crt" -days 3650 -sha256 \
        -subj "/O=Berth compose/CN=Berth compose mesh CA" \
        -addext "basicConstraints = critical, CA:TRUE, pathlen:0" \
        -addext "keyUsage = critical, keyCertSign, cRLSign" \
        -addext "subjectKeyIdentifier = hash" 2>/dev/null
    chmod 0600 "$out/mesh-ca.key"
    chmod 0644 "$out/mesh-ca.crt"
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "${hosts[@]}"; do
    if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san+=",IP:$h"; else san+=",DNS:$h"; fi
done
issue lb serverAuth "$san"
issue lb-client clientAuth ""
for ((i = 1; i <= replicas; i++)); do
    issue "berth-$i" serverAuth "DNS:berth-$i"
    issue "mesh-$i" "serverAuth, clientAuth" "DNS:berth-mesh" mesh-ca
done

# haproxy wants certificate and key in one file.
cat "$out/lb.crt" "$out/lb.key" >"$out/lb.pem"
cat "$out/lb-client.crt" "$out/lb-client.key" >"$out/lb-client.pem"
chmod 0644 "$out/lb.pem" "$out/lb-client.pem"
rm -f "$out/lb.key" "$out/lb-client.key"

for f in lb lb-client $(seq -f 'berth-%g' 1 "$replicas"); do
    openssl verify -CAfile "$out/ca.crt" "$out/$f.crt" >/dev/null
done
for f in $(seq -f 'mesh-%g' 1 "$replicas"); do
    openssl verify -CAfile "$out/mesh-ca.crt" "$out/$f.crt" >/dev/null
done
echo "gen-certs.sh: wrote the CAs, lb.pem, lb-client.pem, berth-1..$replicas and mesh-1..$replicas to $out" >&2
