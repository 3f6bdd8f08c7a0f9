# Shared by download_models.sh and download_first_stages.sh (sourced, not run): fetch a release file
# into a model folder and check what arrived: a non-empty file, an archive that unzips, the
# checkpoint it should hold, and the config beside it that builds the model.

# wget's exit statuses (wget(1), EXIT STATUS).
WGET_STATUS=([1]="generic error" [2]="parse error" [3]="file I/O error (disk full or not writable?)"
             [4]="network failure (no connection, or the host cannot be resolved)" [5]="SSL verification failure"
             [6]="authentication failure" [7]="protocol error" [8]="the server answered with an error (see above)")

fetch() {  # url dest: download, with the tool's own error messages on stderr; says why it failed
  local status=0
  if command -v wget >/dev/null 2>&1; then
    wget -nv --show-progress -O "$2" "$1" || status=$?
    (( status == 0 )) || echo "wget exit status $status: ${WGET_STATUS[$status]:-unknown error}" >&2
  elif command -v curl >/dev/null 2>&1; then
    curl -fL --progress-bar -o "$2" "$1" || status=$?  # curl prints its own reason, e.g. "(22) ... 404"
    (( status == 0 )) || echo "curl exit status $status (see curl(1), EXIT CODES)" >&2
  else
    echo "neither wget nor curl is installed" >&2
    status=1
  fi
  return $status
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
  local created=0
  [[ -d $folder ]] || created=1
  mkdir -p "$folder"
  local tmp="$folder/.$file.part"
  # On failure: remove what this download wrote, and the folder if it created it (it is then empty).
  abort() {
    rm -f "$tmp" "$folder/$file"
    (( created )) && rmdir "$folder" 2>/dev/null
    fail "$name: $*"
  }
  echo "$name: downloading $url"
  fetch "$url" "$tmp" || abort "download of $url failed (reason above); nothing was kept"
  [[ -s $tmp ]] || abort "$url gave an empty file"
  if [[ $file == *.zip ]]; then
    mv "$tmp" "$folder/$file"
    unzip -tq "$folder/$file" >/dev/null || abort "$url is not a valid zip archive (interrupted download?)"
    (cd "$folder" && unzip -o -q "$file") || abort "unzipping $folder/$file failed"
    rm -f "$folder/$file"
  else
    mv "$tmp" "$folder/$file"
  fi
  [[ -s $ckpt ]] || fail "$name: expected $ckpt after the download; found: $(ls "$folder")"
  [[ -f $config ]] || fail "$name: the config $config that builds this model is missing from the checkout"
  echo "$name: $ckpt ($(du -h "$ckpt" | cut -f1)), config $config"
}
