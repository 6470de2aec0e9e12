#!/usr/bin/env bash
# Build tf2_msgs (not on PyPI) into the virtual environment with the real rosidl tool chain.
# Usage: build_tf2_msgs.sh VENV_DIR
set -euo pipefail
venv=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
py="$venv/bin/python"
# The ROS wheels' CMake exports name the include folders of the machine that built them
# (/opt/python/<tag>/...): point them at this environment's own, inside the venv (nothing is
# written outside it, so no root is needed).
pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tag="cp${pyver/./}-cp${pyver/./}"
if [ ! -f "$pyinc/Python.h" ]; then
  echo "build_tf2_msgs: no Python.h in $pyinc: install the Python headers (Debian/Ubuntu:" \
       "apt install python$pyver-dev)" >&2
  exit 1
fi
old_pyinc="/opt/python/$tag/include/python$pyver"
old_npinc="/opt/python/$tag/lib/python$pyver/site-packages/numpy/_core/include"
escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }   # for a sed replacement
while IFS= read -r -d '' export_file; do
  sed -i -e "s|$old_pyinc|$(escape "$pyinc")|g" -e "s|$old_npinc|$(escape "$npinc")|g" \
    "$export_file"
done < <(grep -rlZF --include='*.cmake' -e "$old_pyinc" -e "$old_npinc" "$venv/share" || true)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"
cmake -S "$here/tf2_msgs" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF > "$build/configure.log" 2>&1 \
  || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j2 > "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
cmake --install "$build" > /dev/null
