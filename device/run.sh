#!/usr/bin/env bash
# vaekit's GPU check on a bare GPU machine: no package index, minutes of time, the machine's own CUDA torch.
# `make device-bundle` copies this file to .device/run.sh beside .device/wheels/; copy .device/ to the machine
# next to (or inside) a checkout, then:
#
#     bash .device/run.sh [vaekit gpu-check arguments]      e.g. --deadline 300, --sections exactness timings
#
# PYTHON (default python3) is the interpreter holding torch; OUT (default ./gpu-check-out) receives
# gpu-check.json, gpu-check.md and run.log, rewritten as each row is measured, so a run cut short still
# returns what it measured. The wheels go to a temporary folder (nothing is installed into the machine's
# Python) with pip's --no-index --no-deps: torch, numpy, safetensors, ... are the machine's own.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-./gpu-check-out}"
mkdir -p "$OUT" || { echo "run.sh: cannot make the output folder $OUT" >&2; exit 2; }
exec > >(tee "$OUT/run.log") 2>&1

deadline=420  # seconds for gpu-check itself; the wheels and the versions take a few more
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --deadline) deadline="${args[i + 1]:-$deadline}" ;;
    --deadline=*) deadline="${args[i]#--deadline=}" ;;
  esac
done

site="$(mktemp -d "${TMPDIR:-/tmp}/vaekit-site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
wheels=("$here"/wheels/*.whl)
if ((${#wheels[@]} == 0)); then
  echo "run.sh: no wheels in $here/wheels: run 'make device-bundle' in a vaekit checkout first" >&2
  exit 2
fi
start=$(date +%s)
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" \
    "${wheels[@]}"; then
  echo "run.sh: installing the bundle's wheels with $PYTHON -m pip failed (see above)" >&2
  exit 2
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
echo "run.sh: ${#wheels[@]} wheels installed into $site in $(($(date +%s) - start)) s"

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/run.sh: GPU: /'
fi
"$PYTHON" - <<'PY' || { echo "run.sh: the bundle does not import with $PYTHON (see above)" >&2; exit 2; }
import platform

import torch

import diffusers
import vaekit

cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"run.sh: python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {cudnn}, diffusers {diffusers.__version__}, vaekit {vaekit.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"run.sh: torch sees {torch.cuda.device_count()} GPU(s): {p.name}, {p.total_memory / 2**30:.1f} GiB, "
          f"capability {p.major}.{p.minor}")
else:
    print("run.sh: torch sees no CUDA GPU")
PY

# the deadline is gpu-check's own (it stops itself a tenth past it); timeout is the backstop for a hung call
timeout --signal=KILL "$(( ${deadline%.*} + ${deadline%.*} / 5 + 60 ))" \
  "$PYTHON" -m vaekit gpu-check --deadline "$deadline" --out "$OUT" "$@"
rc=$?
echo "run.sh: gpu-check exited $rc after $(($(date +%s) - start)) s; results in $OUT"
exit $rc
