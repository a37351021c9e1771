#!/usr/bin/env bash
# Build the vpr_msgs interface package (rosidl) and install it into a venv that holds
# the ROS 2 Kilted PyPI wheels from requirements.txt. Safe to rerun: a second run only
# lets ninja confirm that nothing changed.
#
# Usage: tools/build_msgs.sh <venv-dir>
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 <venv-dir>" >&2
  exit 2
fi
VENV="$(cd "$1" && pwd)"
PY="$VENV/bin/python"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$REPO/build/vpr_msgs"
[[ -x "$PY" ]] || { echo "error: $PY not found (create the venv first)" >&2; exit 1; }

# (a) rosidl generates C/C++ sources and builds them with CMake + Ninja. A bare machine
# lacks the tools; install only what is missing.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++   >/dev/null || missing+=(g++)
command -v ninja >/dev/null || missing+=(ninja-build)
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# (b) The wheels' CMake export files name the include dirs of the manylinux machine that
# built them (/opt/python/cp3XX-cp3XX/...). Point them at this interpreter's Python and
# numpy headers. Files already rewritten are left untouched, so a rerun changes nothing.
rewritten=$("$PY" - "$VENV" <<'EOF'
import pathlib, re, sys, sysconfig
import numpy
py_inc, np_inc = sysconfig.get_paths()["include"], numpy.get_include()
if not pathlib.Path(py_inc, "Python.h").is_file():
    sys.exit(f"error: {py_inc}/Python.h missing (install this Python's dev headers)")
foreign_py = re.compile(r"/opt/python/[^;\"\s/]+/include/python3\.\d+")
foreign_np = re.compile(r"/opt/python/[^;\"\s]*/site-packages/numpy/_?core/include")
n = 0
for f in pathlib.Path(sys.argv[1], "share").rglob("*.cmake"):
    text = f.read_text()
    if "/opt/python/" not in text:
        continue
    new = foreign_np.sub(lambda _: np_inc, foreign_py.sub(lambda _: py_inc, text))
    if new != text:
        f.write_text(new)
        n += 1
print(n)
EOF
)

# (c) Configure, build and install into the venv. A build dir set up for another venv is
# wiped (its CMake cache points at that venv's packages). Configure only when there is no
# build.ninja yet: afterwards ninja itself reruns CMake when CMakeLists.txt changes.
if ! grep -qsx "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
mkdir -p "$BUILD"
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S "$REPO/vpr_msgs" -B "$BUILD" -G Ninja \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD/configure.log" 2>&1 \
    || { cat "$BUILD/configure.log" >&2; exit 1; }
fi
cmake --build "$BUILD" >"$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log" >&2; exit 1; }
cmake --install "$BUILD" >"$BUILD/install.log" 2>&1 || { cat "$BUILD/install.log" >&2; exit 1; }

# (d) Check that the generated Python bindings load and round-trip through CDR, in the
# environment the node runs in (AMENT_PREFIX_PATH = venv, for ament index lookups). The
# wheels' bootstrap .pth re-execs python with LD_LIBRARY_PATH set unless its guard variable
# is inherited; drop the guard so a stripped-down parent environment cannot break the import.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
AMENT_PREFIX_PATH="$VENV" "$PY" - <<'EOF'
from rclpy.serialization import deserialize_message, serialize_message
from vpr_msgs.msg import LoopClosure, PlaceMatch
from vpr_msgs.srv import LoadMap, QueryPlace, ResetMap, SaveMap, SetMode
LoopClosure(); SaveMap.Request(); SaveMap.Response(); LoadMap.Request(); LoadMap.Response()
for srv in (QueryPlace, ResetMap, SetMode):
    srv.Request(); srv.Response()
m = PlaceMatch(query_id=7, candidate_ids=[3, 1], scores=[0.9, 0.5], candidate_frame_ids=["cam", "cam"])
back = deserialize_message(serialize_message(m), PlaceMatch)
assert back == m, (back, m)
EOF

# (e) One line of summary.
echo "vpr_msgs: rewrote include paths in $rewritten cmake file(s); built in ${BUILD#"$REPO"/}; installed and verified in $VENV"
