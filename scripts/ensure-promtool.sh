# Sourced by run_tests.sh after ensure-venv.sh: the metrics test lints /metrics with
# promtool, Prometheus' own checker. One on PATH or in $venv/bin is used; otherwise
# promtool alone is taken out of Debian's prometheus package (apt-get download, then
# dpkg-deb) into $venv/bin, since installing the package would also set up a Prometheus
# server, and start it where a service manager runs. Without apt-get, the script says
# what to install and stops.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$venv/bin/promtool" ]; then
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
        echo "taking promtool out of Debian's prometheus package for the tests" >&2
        scratch=$(mktemp -d)
        apt_options=()
        # As root, apt fetches as _apt, which cannot write into a private directory.
        [ "${EUID:-$(id -u)}" = 0 ] && apt_options=(-o APT::Sandbox::User=root)
        if (cd "$scratch" && apt-get "${apt_options[@]}" download -qq prometheus >&2) \
            || { [ "${EUID:-$(id -u)}" = 0 ] && apt-get update -qq >&2 \
                && (cd "$scratch" && apt-get "${apt_options[@]}" download -qq prometheus >&2); }; then
            dpkg-deb --fsys-tarfile "$scratch"/prometheus_*.deb \
                | tar -x -C "$scratch" ./usr/bin/promtool \
                && install -m 755 "$scratch/usr/bin/promtool" "$venv/bin/promtool"
        fi
        rm -rf "$scratch"
    fi
    if [ ! -x "$venv/bin/promtool" ]; then
        echo "the tests need promtool on PATH or in $venv/bin; install it (Debian, Ubuntu: apt-get install prometheus; macOS: brew install prometheus; elsewhere: the promtool of a release from https://prometheus.io/download/)" >&2
        exit 1
    fi
fi
