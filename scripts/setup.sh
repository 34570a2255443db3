#!/usr/bin/env bash
# Sets up passc in ./.venv: the cross toolchain and emulator (apt), then passc itself (pip).
#   scripts/setup.sh         passc, for compiling and verifying models
#   scripts/setup.sh --dev   also torch, the test tools, Chromium (the report tests open pages in it)
#                            and the example plugin, for the tests
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v g++ >/dev/null || need_apt+=(g++)
if [ "${1:-}" = "--dev" ]; then
    command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} (apt)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ "${1:-}" = "--dev" ]; then
    echo "setup: installing passc with torch, tuning, the test and the benchmark tools into .venv (pip)" >&2
    "${pip[@]}" -e ".[dev,torch,bench,tune]" -e examples/custom_pass
    # Real pretrained models for the slow tests: PaddleOCR's ship inside rapidocr-onnxruntime,
    # Silero VAD (an LSTM voice activity detector) inside silero-vad.
    "${pip[@]}" --no-deps rapidocr-onnxruntime==1.4.4 silero-vad==6.2.3
else
    echo "setup: installing passc into .venv (pip)" >&2
    "${pip[@]}" -e .
fi
echo "setup: done; activate with: . .venv/bin/activate" >&2
