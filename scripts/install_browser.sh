#!/usr/bin/env bash
# Install Debian's headless-capable Chromium and its WebDriver for tests/test_browser.py (Selenium comes with the
# venv's test extra). Does nothing when both are there; otherwise needs root (or sudo) and apt-get.
#   bash scripts/install_browser.sh
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
sudo=()
if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
if ! command -v apt-get >/dev/null || { [ ${#sudo[@]} = 1 ] && ! command -v sudo >/dev/null; }; then
  echo "install_browser.sh: needs apt-get and root to install chromium and chromium-driver;" \
       "without them tests/test_browser.py skips (outside CI)." >&2
  exit 1
fi
echo "Installing Debian's chromium and chromium-driver (apt-get, about a minute) ..."
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq)
"${apt[@]}" update
"${apt[@]}" install -y chromium chromium-driver fonts-liberation >/dev/null
