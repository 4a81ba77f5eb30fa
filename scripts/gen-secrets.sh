#!/usr/bin/env bash
# Secrets for the deployments, generated here and never committed.
#   scripts/gen-secrets.sh [compose]   deploy/compose/.env from .env.example: every empty secret
#                                      gets a random value; values already in .env are kept
#                                      (idempotent). Also deploy/compose/secrets/pgbouncer-userlist.txt.
#   scripts/gen-secrets.sh k8s         prints the Kubernetes Secrets (from the same .env, created
#                                      first if missing):  scripts/gen-secrets.sh k8s | kubectl apply -f -
#   scripts/gen-secrets.sh rotate KEY  a new random value for KEY in .env (then re-apply; see
#                                      docs/runbook.md "Rotate secrets")
# ENV_FILE overrides where the values live (default deploy/compose/.env).
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_FILE="${ENV_FILE:-deploy/compose/.env}"
SECRETS_DIR="$(dirname "$ENV_FILE")/secrets"
mode="${1:-compose}"

rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
is_secret() { case "$1" in *PASSWORD*|*SECRET*|*_API_KEY|*_ROOT_USER) return 0 ;; *) return 1 ;; esac; }
# Keys only a cloud engine needs: left empty unless set by hand.
is_optional() { case "$1" in GOOGLE_VISION_API_KEY|GEMINI_API_KEY) return 0 ;; *) return 1 ;; esac; }

get() { grep -E "^$1=" "$ENV_FILE" | head -n1 | cut -d= -f2-; }

ensure_env() {
  mkdir -p "$(dirname "$ENV_FILE")" "$SECRETS_DIR"
  touch "$ENV_FILE"
  chmod 600 "$ENV_FILE"
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    key="${line%%=*}"
    default="${line#*=}"
    if grep -qE "^$key=" "$ENV_FILE"; then
      continue
    fi
    if [ -z "$default" ] && is_secret "$key" && ! is_optional "$key"; then
      value="$(rand)"
      [ "$key" = MINIO_ROOT_USER ] && value="trackunit-$(rand | cut -c1-12)"
    else
      value="$default"
    fi
    printf '%s=%s\n' "$key" "$value" >>"$ENV_FILE"
  done < .env.example
  # PgBouncer authenticates the two service roles with their passwords (scram from plain text).
  umask 077
  {
    printf '"ingestion" "%s"\n' "$(get INGESTION_DB_PASSWORD)"
    printf '"orchestrator" "%s"\n' "$(get ORCHESTRATOR_DB_PASSWORD)"
  } >"$SECRETS_DIR/pgbouncer-userlist.txt"
}

secret() { # namespace name key=value...
  local ns="$1" name="$2"; shift 2
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n    app.kubernetes.io/part-of: trackunit\ntype: Opaque\nstringData:\n' "$name" "$ns"
  local kv
  for kv in "$@"; do
    printf '  %s: "%s"\n' "${kv%%=*}" "${kv#*=}"
  done
}

k8s() {
  local token rabbit ing orc s3k s3s
  token="$(get INTERNAL_AUTH_API_KEY)"
  rabbit="amqp://trackunit:$(get RABBITMQ_PASSWORD)@rabbitmq.messaging.svc.cluster.local:5672/%2f"
  ing="$(get INGESTION_DB_PASSWORD)"; orc="$(get ORCHESTRATOR_DB_PASSWORD)"
  s3k="$(get MINIO_ROOT_USER)"; s3s="$(get MINIO_ROOT_PASSWORD)"
  local pgb=pgbouncer.database.svc.cluster.local:6432 pg=postgres.database.svc.cluster.local:5432
  secret graph-gateway graph-gateway-secrets "INTERNAL_AUTH_API_KEY=$token" "RABBIT_URL=$rabbit"
  secret tu-ingestion-service tu-ingestion-service-secrets "INTERNAL_AUTH_API_KEY=$token" \
    "DATABASE_URL=postgres://ingestion:$ing@$pgb/ingestion" \
    "DATABASE_MIGRATE_URL=postgres://ingestion:$ing@$pg/ingestion" \
    "S3_ACCESS_KEY=$s3k" "S3_SECRET_KEY=$s3s"
  secret tu-media-access-service tu-media-access-service-secrets "INTERNAL_AUTH_API_KEY=$token" \
    "S3_ACCESS_KEY=$s3k" "S3_SECRET_KEY=$s3s"
  secret svc-messaging-bridge svc-messaging-bridge-secrets "RABBIT_URL=$rabbit"
  secret svc-analysis-orchestrator svc-analysis-orchestrator-secrets "INTERNAL_AUTH_API_KEY=$token" \
    "RABBIT_URL=$rabbit" \
    "DATABASE_URL=postgres://orchestrator:$orc@$pgb/orchestrator" \
    "DATABASE_MIGRATE_URL=postgres://orchestrator:$orc@$pg/orchestrator"
  secret svc-ai-vision-adapter svc-ai-vision-adapter-secrets "INTERNAL_AUTH_API_KEY=$token" \
    "GOOGLE_VISION_API_KEY=$(get GOOGLE_VISION_API_KEY)" "GEMINI_API_KEY=$(get GEMINI_API_KEY)"
  secret messaging rabbitmq-secrets "RABBITMQ_DEFAULT_USER=trackunit" "RABBITMQ_DEFAULT_PASS=$(get RABBITMQ_PASSWORD)"
  secret storage minio-secrets "MINIO_ROOT_USER=$s3k" "MINIO_ROOT_PASSWORD=$s3s"
  secret database postgres-secrets "POSTGRES_PASSWORD=$(get POSTGRES_PASSWORD)" \
    "INGESTION_DB_PASSWORD=$ing" "ORCHESTRATOR_DB_PASSWORD=$orc"
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pgbouncer-secrets\n  namespace: database\n  labels:\n    app.kubernetes.io/part-of: trackunit\ntype: Opaque\nstringData:\n  userlist.txt: |\n'
  sed 's/^/    /' "$SECRETS_DIR/pgbouncer-userlist.txt"
  secret api-gateway oauth2-proxy-secrets "OAUTH2_PROXY_CLIENT_SECRET=$(get OAUTH2_PROXY_CLIENT_SECRET)" \
    "OAUTH2_PROXY_COOKIE_SECRET=$(get OAUTH2_PROXY_COOKIE_SECRET)"
}

case "$mode" in
  compose)
    ensure_env
    echo "secrets in $ENV_FILE and $SECRETS_DIR (not committed)" >&2
    ;;
  k8s)
    ensure_env
    k8s
    ;;
  rotate)
    key="${2:?rotate KEY}"
    ensure_env
    grep -qE "^$key=" "$ENV_FILE" || { echo "no $key in $ENV_FILE" >&2; exit 2; }
    tmp="$(mktemp)"
    new="$(rand)"
    awk -v k="$key" -v v="$new" -F= 'BEGIN{OFS="="} $1==k {print k, v; next} {print}' "$ENV_FILE" >"$tmp"
    cat "$tmp" >"$ENV_FILE" && rm -f "$tmp"
    ensure_env
    echo "rotated $key in $ENV_FILE; re-apply (docs/runbook.md)" >&2
    ;;
  *)
    echo "usage: scripts/gen-secrets.sh [compose|k8s|rotate KEY]" >&2
    exit 2
    ;;
esac
