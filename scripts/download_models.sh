#!/usr/bin/env bash
# Download the pretrained latent diffusion models of the model zoo (Rombach et al., CVPR 2022) into
# models/ldm/<name>/ (and the retrieval-augmented model into models/rdm/rdm768x768/), from the
# original release URLs, and check what arrived: a non-empty archive that unzips, and a model.ckpt
# beside the config.yaml that this repository ships for that model.
#
#   bash scripts/download_models.sh              # every model
#   bash scripts/download_models.sh cin256 ffhq256   # only these
#   bash scripts/download_models.sh --list       # the names
#
# Models already present (a non-empty checkpoint) are skipped; delete the file to fetch it again.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=https://ommer-lab.com/files/latent-diffusion

# name|url|archive or checkpoint file (relative to the model folder)|folder
MODELS=(
  "celeba256|$BASE/celeba.zip|celeba-256.zip|models/ldm/celeba256"
  "ffhq256|$BASE/ffhq.zip|ffhq-256.zip|models/ldm/ffhq256"
  "lsun_churches256|$BASE/lsun_churches.zip|lsun_churches-256.zip|models/ldm/lsun_churches256"
  "lsun_beds256|$BASE/lsun_bedrooms.zip|lsun_beds-256.zip|models/ldm/lsun_beds256"
  "text2img256|$BASE/text2img.zip|model.zip|models/ldm/text2img256"
  "cin256|$BASE/cin.zip|model.zip|models/ldm/cin256"
  "semantic_synthesis512|$BASE/semantic_synthesis.zip|model.zip|models/ldm/semantic_synthesis512"
  "semantic_synthesis256|$BASE/semantic_synthesis256.zip|model.zip|models/ldm/semantic_synthesis256"
  "bsr_sr|$BASE/sr_bsr.zip|model.zip|models/ldm/bsr_sr"
  "layout2img-openimages256|$BASE/layout2img_model.zip|model.zip|models/ldm/layout2img-openimages256"
  "text2img-large|$BASE/nitro/txt2img-f8-large/model.ckpt|model.ckpt|models/ldm/text2img-large"
  "cin256-v2|$BASE/nitro/cin/model.ckpt|model.ckpt|models/ldm/cin256-v2"
  "inpainting_big|https://heibox.uni-heidelberg.de/f/4d9ac7ea40c64582b7c9/?dl=1|last.ckpt|models/ldm/inpainting_big"
  "rdm768x768|https://ommer-lab.com/files/rdm/model.ckpt|model.ckpt|models/rdm/rdm768x768"
)

# Models whose config lives in configs/ rather than beside the checkpoint.
declare -A CONFIG_ELSEWHERE=(
  [text2img-large]=configs/latent-diffusion/txt2img-1p4B-eval.yaml
  [cin256-v2]=configs/latent-diffusion/cin256-v2.yaml
  [rdm768x768]=configs/retrieval-augmented-diffusion/768x768.yaml
)

source scripts/download_common.sh

if [[ ${1:-} == --list ]]; then
  for entry in "${MODELS[@]}"; do echo "${entry%%|*}"; done
  exit 0
fi

wanted=("$@")
for name in "${wanted[@]}"; do
  found=0
  for entry in "${MODELS[@]}"; do [[ ${entry%%|*} == "$name" ]] && found=1; done
  (( found )) || fail "unknown model '$name'; known: $(for e in "${MODELS[@]}"; do printf '%s ' "${e%%|*}"; done)"
done

for entry in "${MODELS[@]}"; do
  IFS='|' read -r name url file folder <<<"$entry"
  if (( ${#wanted[@]} )); then
    skip=1
    for w in "${wanted[@]}"; do [[ $w == "$name" ]] && skip=0; done
    (( skip )) && continue
  fi
  download_one "$name" "$url" "$file" "$folder" "${CONFIG_ELSEWHERE[$name]:-$folder/config.yaml}"
done
echo "done."
