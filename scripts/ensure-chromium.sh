# Sourced by run_tests.sh: the console's test (tests/test_console.py) drives a real
# headless Chromium, Debian's, through Playwright, which is told never to download a
# browser of its own. When /usr/bin/chromium is missing, Debian's package is installed
# if this runs as root with apt-get; otherwise the script says what to install and stops.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if ! command -v chromium >/dev/null 2>&1; then
    if [ "${EUID:-$(id -u)}" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (Debian's package) for the tests" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; }
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        echo "the tests need chromium on PATH; install it (Debian, Ubuntu: apt-get install chromium; Fedora: dnf install chromium)" >&2
        exit 1
    fi
fi
