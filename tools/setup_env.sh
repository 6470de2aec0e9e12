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
