#!/usr/bin/env bash
# Create or refresh .venv with the pinned environment (idempotent; seconds when ready).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
stamp="$venv/.setup-stamp"
want=$(cat "$root/requirements.txt" "$root/requirements-build.txt" "$root/setup.py" \
       "$root/tools/setup_env.sh" "$root/tools/build_tf2_msgs.sh" \
       "$root"/tools/tf2_msgs/CMakeLists.txt "$root"/tools/tf2_msgs/msg/*.msg | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
# The pinned wheels (numpy 2.4, scipy 1.17, ONNX Runtime 1.32, ...) need Python 3.11 or newer;
# the package itself runs on 3.10 (ROS 2 Humble) with that distribution's own packages. An
# existing venv keeps the interpreter it was made with.
checked=$python
[ -x "$venv/bin/python" ] && checked="$venv/bin/python"
if ! "$checked" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: the pinned environment needs Python 3.11 or newer; $checked is" \
       "$("$checked" --version 2>&1): run with PYTHON=python3.11 (or newer)" >&2
  exit 1
fi
for tool in cmake cc c++; do
  command -v "$tool" > /dev/null || {
    echo "setup: '$tool' is needed to build tf2_msgs (Debian/Ubuntu: apt install cmake" \
         "build-essential python3-venv)" >&2; exit 1; }
done
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
log="$venv/setup.log"
run() { "$@" > "$log" 2>&1 || { cat "$log"; echo "setup: failed: $*" >&2; exit 1; }; }
run "${pip[@]}" install --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0
run "${pip[@]}" install -r "$root/requirements.txt" -r "$root/requirements-build.txt"
"${pip[@]}" check > /dev/null || { "${pip[@]}" check; exit 1; }
"$root/tools/build_tf2_msgs.sh" "$venv"
run "${pip[@]}" install --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -c 'import rclpy, tf2_msgs.msg, torch, onnxruntime, hand_pose_ros' 
echo "$want" > "$stamp"
echo "setup: environment ready in $(( $(date +%s) - start )) s at $venv"
