#!/bin/sh
# l2-wait DIR TIMEOUT_S [PATTERN]: "exited STATUS", "found" (PATTERN in the console) or "timeout".
dir=$1; end=$(( $(date +%s) + $2 )); pattern=$3
while :; do
    if [ -e "$dir/rc" ]; then echo "exited $(cat "$dir/rc")"; exit 0; fi
    if [ -n "$pattern" ] && grep -q -- "$pattern" "$dir/console.log" 2>/dev/null; then
        echo found; exit 0
    fi
    if [ "$(date +%s)" -ge "$end" ]; then echo timeout; exit 0; fi
    usleep 20000
done
