#!/usr/bin/env bash
# Download the pretrained first-stage autoencoders of the model zoo (Rombach et al., CVPR 2022) into
# models/first_stage_models/<name>/ from the original release URLs, and check what arrived: a
# non-empty archive that unzips, and a model.ckpt beside the config.yaml this repository ships.
#
#   bash scripts/download_first_stages.sh            # every autoencoder
#   bash scripts/download_first_stages.sh kl-f8 vq-f4  # only these
#   bash scripts/download_first_stages.sh --list     # the names
#
# Autoencoders already present (a non-empty model.ckpt) are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=https://ommer-lab.com/files/latent-diffusion
NAMES=(kl-f4 kl-f8 kl-f16 kl-f32 vq-f4 vq-f4-noattn vq-f8 vq-f8-n256 vq-f16)

fetch() {  # url dest
  if command -v wget >/dev/null 2>&1; then
    wget -q --show-progress -O "$2" "$1"
  elif command -v curl >/dev/null 2>&1; then
    curl -fL --progress-bar -o "$2" "$1"
  else
    echo "error: neither wget nor curl is installed" >&2
    return 1
  fi
}

fail() { echo "error: $*" >&2; exit 1; }

if [[ ${1:-} == --list ]]; then
  printf '%s\n' "${NAMES[@]}"
  exit 0
fi

wanted=("$@")
(( ${#wanted[@]} )) || wanted=("${NAMES[@]}")
for name in "${wanted[@]}"; do
  [[ " ${NAMES[*]} " == *" $name "* ]] || fail "unknown autoencoder '$name'; known: ${NAMES[*]}"
done

for name in "${wanted[@]}"; do
  folder=models/first_stage_models/$name
  if [[ -s $folder/model.ckpt ]]; then
    echo "$name: $folder/model.ckpt already present, skipped"
    continue
  fi
  mkdir -p "$folder"
  url=$BASE/$name.zip
  echo "$name: downloading $url"
  fetch "$url" "$folder/.model.zip.part" || { rm -f "$folder/.model.zip.part"; fail "$name: download of $url failed"; }
  [[ -s $folder/.model.zip.part ]] || { rm -f "$folder/.model.zip.part"; fail "$name: $url gave an empty file"; }
  mv "$folder/.model.zip.part" "$folder/model.zip"
  unzip -tq "$folder/model.zip" >/dev/null || fail "$name: $folder/model.zip is not a valid zip archive (interrupted download?)"
  (cd "$folder" && unzip -o -q model.zip) || fail "$name: unzipping $folder/model.zip failed"
  rm -f "$folder/model.zip"
  [[ -s $folder/model.ckpt ]] || fail "$name: expected $folder/model.ckpt after unzipping; found: $(ls "$folder")"
  [[ -f $folder/config.yaml ]] || fail "$name: $folder/config.yaml (the config that builds it) is missing from the checkout"
  echo "$name: $folder/model.ckpt ($(du -h "$folder/model.ckpt" | cut -f1))"
done
echo "done."
