# Sourced by run_tests.sh: the tests start private redis-server processes, so
# the binary must be on PATH. When it is not, Debian's package is installed if this runs as root with apt-get;
# otherwise the script says what to install and stops.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "${EUID:-$(id -u)}" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (Debian's package) for the tests" >&2
        # Only the binary is wanted: the package's service need not start.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2; }
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "the tests need redis-server on PATH; install it (Debian, Ubuntu: apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis)" >&2
        exit 1
    fi
fi
