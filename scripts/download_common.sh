# Shared by download_models.sh and download_first_stages.sh (sourced, not run): fetch a release file
# into a model folder and check what arrived: a non-empty file, an archive that unzips, the
# checkpoint it should hold, and the config beside it that builds the model.

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

download_one() {  # name url file folder config
  local name=$1 url=$2 file=$3 folder=$4 config=$5
  local ckpt="$folder/model.ckpt"
  [[ $file == last.ckpt ]] && ckpt="$folder/last.ckpt"
  if [[ -s $ckpt ]]; then
    echo "$name: $ckpt already present, skipped"
    return 0
  fi
  mkdir -p "$folder"
  echo "$name: downloading $url"
  local tmp="$folder/.$file.part"
  fetch "$url" "$tmp" || { rm -f "$tmp"; fail "$name: download of $url failed"; }
  [[ -s $tmp ]] || { rm -f "$tmp"; fail "$name: $url gave an empty file"; }
  if [[ $file == *.zip ]]; then
    mv "$tmp" "$folder/$file"
    unzip -tq "$folder/$file" >/dev/null || fail "$name: $folder/$file is not a valid zip archive (interrupted download?)"
    (cd "$folder" && unzip -o -q "$file") || fail "$name: unzipping $folder/$file failed"
    rm -f "$folder/$file"
  else
    mv "$tmp" "$folder/$file"
  fi
  [[ -s $ckpt ]] || fail "$name: expected $ckpt after the download; found: $(ls "$folder")"
  [[ -f $config ]] || fail "$name: the config $config that builds this model is missing from the checkout"
  echo "$name: $ckpt ($(du -h "$ckpt" | cut -f1)), config $config"
}
