#!/bin/sh
# Rebuild src/enclaved/web/crypto.js from the locked @noble packages.
# Needs Node.js and npm at build time only; the node serves the committed file.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
