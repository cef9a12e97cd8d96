# Helpers shared by every guest workload.  Each check prints exactly one line
#   RESULT <name> ok|fail [detail]
# so that the host can name precisely what broke; VALUE lines carry data for host-side checks.

flat() {
    # One line, bounded, so a detail can never break the line protocol.
    printf '%s' "$1" | tr '\n\r' '||' | cut -c1-400
}

ok() { echo "RESULT $1 ok"; }
fail() { echo "RESULT $1 fail $(flat "$2")"; }

# check NAME COMMAND...: passes when COMMAND exits 0.
check() {
    check_name=$1
    shift
    check_output=$("$@" 2>&1)
    check_status=$?
    if [ "$check_status" -eq 0 ]; then
        ok "$check_name"
    else
        fail "$check_name" "exit $check_status: $check_output"
    fi
}

# refuse NAME COMMAND...: passes when COMMAND fails (something must be denied).
refuse() {
    check_name=$1
    shift
    check_output=$("$@" 2>&1)
    check_status=$?
    if [ "$check_status" -ne 0 ]; then
        ok "$check_name"
    else
        fail "$check_name" "unexpectedly succeeded: $check_output"
    fi
}

# expect NAME EXPECTED COMMAND...: passes when COMMAND exits 0 and prints exactly EXPECTED.
expect() {
    check_name=$1
    check_expected=$2
    shift 2
    check_output=$("$@" 2>&1)
    check_status=$?
    if [ "$check_status" -eq 0 ] && [ "$check_output" = "$check_expected" ]; then
        ok "$check_name"
    else
        fail "$check_name" "exit $check_status, expected [$check_expected] got [$check_output]"
    fi
}

# value NAME COMMAND...: reports COMMAND's output for the host to compare.
value() {
    value_name=$1
    shift
    echo "VALUE $value_name $(flat "$("$@" 2>&1)")"
}

# as_user COMMAND: runs a shell command as the ordinary guest user (uid 1000, gid 1000).
as_user() {
    su -s /bin/sh user -c "$1"
}

# in_host COMMAND...: runs a host program (booted with host_root=True) chrooted into the host's
# read-only root, where the virtio-fs share is /mnt and /tmp is the guest's own tmpfs.
in_host() {
    if [ ! -d /host/mnt ] || ! grep -q " /host 9p " /proc/mounts; then
        echo "in_host: the host root is not mounted (boot with host_root=True)" >&2
        return 127
    fi
    chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/tmp LANG=C.UTF-8 "$@"
}
