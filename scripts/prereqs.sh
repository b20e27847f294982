# Sourced by scripts/test, scripts/demo and scripts/package: installs what a fresh Debian
# machine lacks, or says exactly what to install. Usage: ensure_prereqs [mosquitto]
# [promtool] [schemathesis] [package] [package-checks]
ensure_prereqs() {
  local need=()
  command -v cargo >/dev/null 2>&1 || { echo "error: Rust is not installed (https://rustup.rs)"; exit 1; }
  command -v clang >/dev/null 2>&1 || need+=(clang)
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
  command -v c++ >/dev/null 2>&1 || need+=(g++)
  local want st=0
  for want in "$@"; do
    case "$want" in
      mosquitto)
        command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
        # The TLS test makes its certificates with the openssl command.
        command -v openssl >/dev/null 2>&1 || need+=(openssl) ;;
      promtool)
        # Debian ships promtool in the prometheus package (the server is not started).
        command -v promtool >/dev/null 2>&1 || need+=(prometheus) ;;
      package)
        # scripts/package: cargo-deb finds the package's dependencies with dpkg-shlibdeps.
        command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev) ;;
      package-checks)
        # The package's test: lintian checks the .deb, systemd-analyze the unit.
        command -v lintian >/dev/null 2>&1 || need+=(lintian)
        command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) ;;
      schemathesis)
        st=1
        # The OpenAPI fuzz test runs schemathesis (PyPI) from a venv when python3 is here;
        # Debian's python3 makes venvs only with python3-venv.
        if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip' 2>/dev/null; then
          need+=(python3-venv)
        fi ;;
    esac
  done
  install_packages "${need[@]}"
  [ "$st" -eq 0 ] || ensure_schemathesis
}

# cargo-deb (scripts/package), pinned, compiled once per machine in a target directory of its
# own, so that the workspace's build (and RocksDB's) is not disturbed.
CARGO_DEB_VERSION=3.8.0
ensure_cargo_deb() {
  cargo deb --version 2>/dev/null | grep -qxF "cargo-deb $CARGO_DEB_VERSION" && return 0
  echo "installing cargo-deb $CARGO_DEB_VERSION from crates.io (a few minutes, once per machine)"
  CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/meterstand/tools" \
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
}

# schemathesis (the OpenAPI fuzz test) and pyarrow (a Parquet reader that is not ours, for the
# Parquet test), pinned, in a venv of their own beside the target directory. Without python3
# those tests say they skipped that part and why; a failed install is reported the same way.
SCHEMATHESIS_VERSION=4.32.5
PYARROW_VERSION=26.0.1
ensure_schemathesis() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/meterstand/venv"
  if "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION" \
    && "$venv/bin/python" -c "import pyarrow, sys; sys.exit(pyarrow.__version__ != '$PYARROW_VERSION')" 2>/dev/null; then
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "note: no python3 here, so the OpenAPI fuzz test will be skipped (apt-get install python3 python3-venv)"
    return 0
  fi
  echo "installing schemathesis $SCHEMATHESIS_VERSION and pyarrow $PYARROW_VERSION from PyPI into $venv"
  if ! { python3 -m venv "$venv" \
    && "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" "pyarrow==$PYARROW_VERSION"; }; then
    echo "note: schemathesis or pyarrow could not be installed; the tests that use them say so and skip that part"
  fi
}

install_packages() {
  local need=("$@")
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing missing packages: ${need[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: missing ${need[*]}; run as root: apt-get install -y ${need[*]}"; exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]} and no apt-get here; install them with your package manager"; exit 1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# One target directory outside the clone, shared by tests, the demo and benchmarks, so RocksDB
# (about 20 minutes of C++) is compiled once per machine, not per clone or per profile.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meterstand/target}"

# Every command builds the same set (all targets, release), so that cargo's feature
# unification gives RocksDB one hash and its build is reused by tests, demo and benches.
build_all() {
  cargo build --release --workspace --all-targets --locked
}
