#!/usr/bin/env bash
# Set up scalinglab in a virtual environment (.venv, or $SCALINGLAB_VENV) on a fresh machine.
#
#   bash cluster/install.sh          # torch, DeepSpeed, Ray, the trackers' clients and the project (editable)
#   bash cluster/install.sh --dev    # ... plus the test tools, and Chromium for the report's browser test
#   --cpu / --gpu                    # force a torch build (default: GPU iff nvidia-smi sees one)
#
# torch is installed first and pinned (TORCH_VERSION, default 2.13.0) so that no later
# requirement can swap it for another build. Without a GPU the CPU build is wanted: pip takes
# a local CPU wheel when one is on its find-links path (as on our CI machines); elsewhere set
# TORCH_INDEX_URL to PyTorch's CPU wheel index (see PyTorch's install selector). With a GPU,
# the default Linux wheel of torch is the CUDA build. Ray cluster nodes run this same script
# (ray_config.yaml's setup_commands).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${SCALINGLAB_VENV:-.venv}
python=${PYTHON:-python3}
torch_version=${TORCH_VERSION:-2.13.0}
extras="[tracking]" mode=auto
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[tracking,dev]" ;;
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    *) echo "install.sh: unknown option $arg (expected --dev, --cpu or --gpu)" >&2; exit 2 ;;
  esac
done
if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=gpu; else mode=cpu; fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: installing torch==$torch_version ($mode build) into $venv" >&2
  index=()
  if [ "$mode" = cpu ] && [ -n "${TORCH_INDEX_URL:-}" ]; then index=(--index-url "$TORCH_INDEX_URL"); fi
  "${pip[@]}" install "torch==$torch_version" "${index[@]}"
fi
"$venv/bin/python" -W ignore - "$mode" <<'PY'
import sys, torch
mode = sys.argv[1]
cuda = torch.version.cuda
print(f"install.sh: torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU'} build)", file=sys.stderr)
if mode == "cpu" and cuda:
    print("install.sh: warning: a CUDA build of torch was installed on a machine without a GPU; "
          "set TORCH_INDEX_URL to PyTorch's CPU wheel index for the small CPU build", file=sys.stderr)
PY

echo "install.sh: installing scalinglab$extras (ray, deepspeed, datasets, pandas, scipy, plotly; mlflow, tensorboard, wandb)" >&2
"${pip[@]}" install -e ".$extras"

# The browser test drives the system Chromium through Playwright (never `playwright install`,
# which downloads a browser). Debian/Ubuntu: the chromium package, installed here when we may.
if [ "$extras" = "[tracking,dev]" ]; then
  if command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ] || [ -n "${SCALINGLAB_CHROMIUM:-}" ]; then
    :
  elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "install.sh: installing Chromium (Debian package chromium) for the report's browser test" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: warning: no Chromium; the browser test will be skipped (install the chromium" \
         "package, or set SCALINGLAB_CHROMIUM to a Chromium binary)" >&2
  fi
fi
echo "install.sh: ready: $venv/bin/scalinglab" >&2
