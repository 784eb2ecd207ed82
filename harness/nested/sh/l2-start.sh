#!/bin/sh
# l2-start DIR ARGV...: run a QEMU in the background; DIR/rc gets its exit status.
dir=$1; shift
if [ -e "$dir/qemu.pid" ] && [ ! -e "$dir/rc" ]; then      # a previous one still runs
    kill -9 "$(cat "$dir/qemu.pid")" 2>/dev/null
    n=0; while [ ! -e "$dir/rc" ] && [ $n -lt 100 ]; do usleep 100000; n=$((n+1)); done
fi
rm -rf "$dir"; mkdir -p "$dir"
wc -l < @L1_FREEZES@ > "$dir/freezes.at-start"     # L1.freezes_during_l2 counts from here
setsid sh -c '"$@" >"$0/stderr" 2>&1; echo $? >"$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"' \
    "$dir" "$@" </dev/null >/dev/null 2>&1 &
