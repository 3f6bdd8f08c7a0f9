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

source scripts/download_common.sh

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
  download_one "$name" "$BASE/$name.zip" model.zip "$folder" "$folder/config.yaml"
done
echo "done."
