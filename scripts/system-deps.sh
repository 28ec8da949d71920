#!/usr/bin/env bash
# Install the system packages facerec needs (Redis, RabbitMQ, shellcheck, and Chromium for
# the web page's browser tests in tests/e2e) when missing:
# with apt-get as root on Debian/Ubuntu; otherwise say exactly what to install.
set -euo pipefail

declare -A package=([redis-server]=redis-server [rabbitmq-server]=rabbitmq-server
                    [rabbitmqctl]=rabbitmq-server [shellcheck]=shellcheck
                    [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for cmd in redis-server rabbitmq-server rabbitmqctl shellcheck chromium chromedriver; do
    # rabbitmq's tools live in /usr/sbin, which a non-root PATH may lack.
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${package[$cmd]}")
done
# kubectl renders the manifests in tests/deploy; Debian has no package for it.
if ! command -v kubectl >/dev/null 2>&1; then
    echo "kubectl is needed by the deployment tests: install it from" >&2
    echo "  https://kubernetes.io/docs/tasks/tools/ (or: snap install kubectl --classic)" >&2
    exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "facerec needs these packages: ${missing[*]}" >&2
    echo "install them, e.g.: sudo apt-get install ${missing[*]}" >&2
    echo "(macOS: brew install redis rabbitmq shellcheck chromium chromedriver)" >&2
    exit 1
fi
