#!/usr/bin/env bash
# A self-signed certificate for local use (idempotent: kept while it is valid for 30 more days).
#   scripts/dev-tls.sh            deploy/compose/secrets/tls/tls.{crt,key} for Traefik
#                                 (hosts graphql.localhost, s3.localhost, grafana.localhost)
#   scripts/dev-tls.sh k8s        also prints the Kubernetes TLS Secret `kong-ingress-tls` for
#                                 namespaces api-gateway and storage (graphql.local,
#                                 s3.graphql.local):  scripts/dev-tls.sh k8s | kubectl apply -f -
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${TLS_DIR:-deploy/compose/secrets/tls}"
mkdir -p "$DIR"
umask 077
crt="$DIR/tls.crt" key="$DIR/tls.key"
if [ ! -f "$crt" ] || ! openssl x509 -checkend 2592000 -noout -in "$crt" >/dev/null 2>&1; then
  openssl req -x509 -nodes -newkey rsa:2048 -days 365 -sha256 \
    -keyout "$key" -out "$crt" -subj "/CN=graphql.local/O=trackunit-dev" \
    -addext "subjectAltName=DNS:graphql.local,DNS:s3.graphql.local,DNS:graphql.localhost,DNS:s3.localhost,DNS:grafana.localhost,DNS:localhost" \
    -addext "extendedKeyUsage=serverAuth" >/dev/null 2>&1
  echo "dev-tls: new certificate in $DIR" >&2
fi
if [ "${1:-}" = k8s ]; then
  for ns in api-gateway storage; do
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: kong-ingress-tls\n  namespace: %s\ntype: kubernetes.io/tls\ndata:\n  tls.crt: %s\n  tls.key: %s\n' \
      "$ns" "$(base64 -w0 <"$crt")" "$(base64 -w0 <"$key")"
  done
fi
