#!/usr/bin/env bash
# Install edgekit's device side on Raspberry Pi OS 64-bit (Debian bookworm, arm64):
# a virtual environment with edgekit[runtime] (LiteRT, numpy, httptools, grpcio: no
# TensorFlow), a system user, a model repository and the systemd unit.
#
#   sudo scripts/pi/install.sh [SOURCE] [--no-systemd]
#
# SOURCE is what pip installs: a checkout of edgekit (default: this one) or a wheel.
# --no-systemd skips the user and unit (for containers or chroots without systemd).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source=$(cd "$here/../.." && pwd)
use_systemd=1
for arg in "$@"; do
  case $arg in
    --no-systemd) use_systemd=0 ;;
    *) source=$arg ;;
  esac
done
prefix=/opt/edgekit
models=/srv/edgekit/models

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 2; }
case $(uname -m) in aarch64|arm64|x86_64) ;; *) echo "install.sh: $(uname -m) has no ai-edge-litert wheel; use a 64-bit OS" >&2; exit 2 ;; esac
python3 -c 'import venv' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }

python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade pip
"$prefix/bin/pip" install --quiet "$source[runtime]"
mkdir -p "$models" /etc/edgekit "$prefix/share"
cp "$here/../../docs/serve.md" "$prefix/share/edgekit-serve.md"  # the unit's Documentation=
[ -f /etc/edgekit/models.json ] || cat > /etc/edgekit/models.json <<JSON
{"model_config_list": [
  {"name": "default", "base_path": "$models/default", "model_version_policy": {"latest": {"num_versions": 1}}}
]}
JSON
mkdir -p "$models/default"

if [ "$use_systemd" -eq 1 ]; then
  id edgekit >/dev/null 2>&1 || useradd --system --home-dir /srv/edgekit --shell /usr/sbin/nologin edgekit
  chown -R edgekit:edgekit /srv/edgekit
  install -m 0644 "$here/edgekit-serve.service" /etc/systemd/system/edgekit-serve.service
  systemctl daemon-reload
  systemctl enable --now edgekit-serve.service
  echo "edgekit serve is running: systemctl status edgekit-serve; journalctl -u edgekit-serve -f"
fi
"$prefix/bin/edgekit" --version
echo "Put models at $models/<name>/<version>/ (model.tflite or an edgekit convert OUT_DIR) and list them in /etc/edgekit/models.json"
