#!/usr/bin/env bash
# Runs inside the test VM (kernel-tests/run-vm -- kernel-tests/probe.sh): the kernel offers
# cachefiles on-demand mode on the ext4 cache disk, and the host's Node.js starts in the guest.
set -euo pipefail
mkdir -p /cache/probe
exec 3<>/dev/cachefiles
echo "dir /cache/probe" >&3   # each echo is one write(): one command
echo "tag probe" >&3
echo "bind ondemand" >&3      # EINVAL here would mean no CONFIG_CACHEFILES_ONDEMAND
exec 3>&-                     # releasing the device unbinds the cache
echo "probe: /dev/cachefiles: dir, tag, bind ondemand on /cache/probe: ok"
for i in 1 2 3; do
  t0=$(date +%s%N)
  node -e 1
  echo "probe: node -e 1 took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
done
node -e 'console.log("probe: node " + process.version + " on Linux " + require("os").release() + ", " + require("os").cpus().length + " CPUs, " + Math.round(require("os").totalmem() / 2**20) + " MiB")'
