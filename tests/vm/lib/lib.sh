# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# The VM harness: a tiny Linux guest built from this machine's Debian
# packages (linux-image-amd64, busybox-static, nbd-client), booted by
# qemu-system-x86_64 under TCG straight into an initramfs.  Sourced by
# tests/vm/*.sh; docs/vm.md explains the whole harness.
#
#   vm_setup                 check the tools, pick the kernel, build (or reuse)
#                            the boot files; exits 77 when something is missing
#   vm_run LOG ARGS...       boot the guest, serial console into LOG; extra
#                            qemu ARGS add the disk or the NIC; the guest's
#                            kernel command line gets $VM_APPEND too
#   vm_expect LOG PATTERN    fail unless LOG has a line matching PATTERN
#   vm_check_fs RAW          e2fsck -fn of an ext4 image (must be clean)
#   vm_cat RAW PATH          print a file of an ext4 image (debugfs)
#   vm_skip / vm_fail MSG    exit 77 / exit 1 with a message
#
# Environment: BUILDDIR (meson's build dir: the boot files are cached in
# $BUILDDIR/vm-cache), VM_TIMEOUT (seconds for one boot, default 300),
# VM_KVER (force a kernel version), VM_KEEP (keep the scratch folder),
# VM_WRAP (a command put before qemu, e.g. "/usr/bin/time -f %U+%S").

VM_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

vm_log() { printf '%s: %s\n' "${VM_TEST_NAME:-vm}" "$*" >&2; }
vm_skip() { printf 'SKIP: %s: %s\n' "${VM_TEST_NAME:-vm}" "$*" >&2; exit 77; }
vm_fail() { printf 'FAIL: %s: %s\n' "${VM_TEST_NAME:-vm}" "$*" >&2; exit 1; }

# A fresh scratch folder, removed on exit along with any process the test
# registered in VM_PIDS (servers).
vm_tmpdir() {
    VM_TMP=$(mktemp -d "${TMPDIR:-/tmp}/rblock-vm.XXXXXX") || vm_fail "mktemp failed"
    VM_PIDS=""
    trap vm_cleanup EXIT
}
vm_cleanup() {
    local p
    for p in $VM_PIDS; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [ -n "${VM_KEEP:-}" ]; then
        echo "kept $VM_TMP" >&2
    else
        rm -rf "$VM_TMP"
    fi
}

# Newest kernel in /boot whose modules are installed too.
vm_pick_kernel() {
    local f v best=""
    if [ -n "${VM_KVER:-}" ]; then
        [ -r "/boot/vmlinuz-$VM_KVER" ] || vm_skip "no /boot/vmlinuz-$VM_KVER"
        [ -r "/lib/modules/$VM_KVER/modules.dep" ] || vm_skip "no modules for $VM_KVER"
        return
    fi
    for f in /boot/vmlinuz-*; do
        [ -r "$f" ] || continue
        v=${f#/boot/vmlinuz-}
        [ -r "/lib/modules/$v/modules.dep" ] || continue
        best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n 1)
    done
    [ -n "$best" ] || vm_fail "no readable /boot/vmlinuz-* with modules (install linux-image-amd64)"
    VM_KVER=$best
}

# The uncompressed ELF inside the bzImage (as the kernel's own
# scripts/extract-vmlinux finds it).  QEMU boots it through its PVH entry
# point, which skips the real-mode setup and the in-guest decompression
# (slow under TCG).  Falls back to the bzImage when there is no PVH note.
vm_extract_elf() {
    local img=$1 out=$2 magic cmd off
    for magic in 'fd377a585a00:xz -dc' '28b52ffd:zstd -dcq' '1f8b0800:gzip -dc'; do
        cmd=${magic#*:}
        command -v "${cmd%% *}" >/dev/null 2>&1 || continue
        # byte offsets of the magic, found without loading the image in a shell
        for off in $(LC_ALL=C grep -obUaP "$(printf '%s' "${magic%%:*}" | sed 's/../\\x&/g')" "$img" | cut -d: -f1 | head -n 4); do
            tail -c +"$((off + 1))" "$img" | $cmd >"$out.tmp" 2>/dev/null
            if [ "$(head -c 4 "$out.tmp" | od -A n -t x1 | tr -d ' ')" = 7f454c46 ] &&
               grep -q 'Unknown note type: (0x00000012)' <<< "$(LC_ALL=C readelf -n "$out.tmp" 2>/dev/null)"; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 1
}

# Modules each guest mode loads (/etc/modules.MODE in the initramfs);
# crc32c_generic because ext4 and jbd2 ask the crypto API for crc32c.
VM_MODULES_BLK="virtio_pci virtio_blk crc32c_generic ext4"
VM_MODULES_NBD="virtio_pci virtio_net nbd crc32c_generic ext4"

# vm_resolve_modules NAME...: their paths under /lib/modules/$VM_KVER,
# dependencies first (from modules.dep), each once.
vm_resolve_modules() {
    local dep=/lib/modules/$VM_KVER/modules.dep m p
    local -A seen=()
    local order=()
    _vm_visit() {
        local path=$1 line deps i
        [ -n "${seen[$path]:-}" ] && return 0
        seen[$path]=1
        line=$(grep -m1 -E "^${path//./\\.}:" "$dep") || return 1
        read -r -a deps <<<"${line#*:}"
        # modules.dep lists the deepest dependency last; load from the end
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
            _vm_visit "${deps[$i]}" || return 1
        done
        order+=("$path")
    }
    for m in "$@"; do
        p=$(grep -m1 -oE "^[^:]*/${m}\.ko(\.xz|\.zst|\.gz)?:" "$dep") || { vm_log "module $m not found for $VM_KVER"; return 1; }
        _vm_visit "${p%:}" || return 1
    done
    printf '%s\n' "${order[@]}"
}

# Build the initramfs: busybox, the modules (decompressed), nbd-client with
# its shared libraries, and tests/vm/lib/init.  Cached by a key over everything
# that goes in, so only the first run of a build dir pays for it.
vm_build_initramfs() {
    local out=$1 root blk nbd m src dst lib key mode
    blk=$(vm_resolve_modules $VM_MODULES_BLK) || vm_skip "kernel modules missing for $VM_KVER"
    nbd=$(vm_resolve_modules $VM_MODULES_NBD) || nbd=""
    key=$( {
        echo "$VM_KVER"
        cat "$VM_LIB_DIR/init" "$VM_LIB_DIR/lib.sh"
        ls -l --time-style=+%s "$(command -v busybox)" /usr/sbin/nbd-client 2>/dev/null
        echo "$blk $nbd"
    } | sha256sum | cut -c1-16)
    VM_INITRD=$out-$key.cpio
    [ -s "$VM_INITRD" ] && return 0
    rm -f "$out"-*.cpio "$out"-*.cpio.tmp   # stale builds of older inputs

    root=$(mktemp -d "$VM_CACHE/root.XXXXXX")
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,mnt,tmp,etc,lib/modules}
    cp "$(command -v busybox)" "$root/bin/busybox"
    for a in $(busybox --list); do
        [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
    done
    cp "$VM_LIB_DIR/init" "$root/init"
    chmod 755 "$root/init"
    for mode in blk nbd; do
        [ "$mode" = nbd ] && [ -z "$nbd" ] && continue
        : >"$root/etc/modules.$mode"
        for m in $([ "$mode" = blk ] && echo "$blk" || echo "$nbd"); do
            src=/lib/modules/$VM_KVER/$m
            dst=$root/lib/modules/$(basename "${m%.xz}")
            dst=${dst%.zst}
            dst=${dst%.gz}
            if [ ! -f "$dst" ]; then
                case "$m" in
                    *.xz) xz -dc "$src" >"$dst" ;;
                    *.zst) zstd -dcq "$src" >"$dst" ;;
                    *.gz) gzip -dc "$src" >"$dst" ;;
                    *) cp "$src" "$dst" ;;
                esac
            fi
            basename "$dst" >>"$root/etc/modules.$mode"
        done
    done
    # Debian's nbd-client, dynamically linked: bring its libraries along.
    if [ -x /usr/sbin/nbd-client ]; then
        cp /usr/sbin/nbd-client "$root/sbin/nbd-client"
        for lib in $(ldd /usr/sbin/nbd-client | grep -oE '/[^ ]+'); do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    fi
    # Not compressed: gunzip in the guest costs more under TCG than QEMU
    # spends loading the larger file (measured; docs/vm.md).
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$VM_INITRD.tmp" ||
        vm_fail "cpio of the initramfs failed"
    mv "$VM_INITRD.tmp" "$VM_INITRD"
    rm -rf "$root"
}

vm_setup() {
    local t
    for t in qemu-system-x86_64 busybox cpio mke2fs debugfs e2fsck qemu-img timeout; do
        command -v "$t" >/dev/null 2>&1 || vm_fail "$t not installed (scripts/install-deps installs it)"
    done
    # (a here-string, not a pipe: under pipefail grep -q's early exit can
    # kill busybox with SIGPIPE and fail the check at random)
    grep -qx insmod <<< "$(busybox --list 2>/dev/null)" ||
        vm_fail "busybox has no insmod applet (install busybox-static)"
    case "$(file -L "$(command -v busybox)" 2>/dev/null)" in
        *static*) ;;
        *) command -v file >/dev/null 2>&1 && vm_fail "busybox is not static (install busybox-static)" ;;
    esac
    vm_pick_kernel
    VM_CACHE=${BUILDDIR:-${TMPDIR:-/tmp}}/vm-cache
    mkdir -p "$VM_CACHE" || vm_fail "cannot create $VM_CACHE"
    VM_KERNEL=$VM_CACHE/vmlinux-$VM_KVER
    if [ ! -s "$VM_KERNEL" ] && ! vm_extract_elf "/boot/vmlinuz-$VM_KVER" "$VM_KERNEL"; then
        VM_KERNEL=/boot/vmlinuz-$VM_KVER
    fi
    [ -r "$VM_KERNEL" ] || vm_skip "$VM_KERNEL is not readable"
    vm_build_initramfs "$VM_CACHE/initramfs-$VM_KVER"
}

# Kernel flags that make a TCG boot faster (docs/vm.md has the figures):
# no crypto self-tests, no zeroing of every allocation, no speculation
# mitigations, no PS/2 probing.  The guest is a throw-away test VM.
VM_KERNEL_FLAGS="cryptomgr.notests init_on_alloc=0 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp"

# vm_run LOG [qemu args...]: one boot; returns QEMU's status (124 when the
# guest hung past VM_TIMEOUT).  The guest powers off when /init ends.
vm_run() {
    local log=$1 rc t0 t1
    shift
    t0=$(date +%s.%N)
    ${VM_WRAP:-} timeout -k 10 "${VM_TIMEOUT:-300}" qemu-system-x86_64 \
        -M pc -cpu max -accel tcg -m 256 -smp 1 \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial "file:$log" \
        -kernel "$VM_KERNEL" -initrd "$VM_INITRD" \
        -append "console=ttyS0 quiet panic=-1 $VM_KERNEL_FLAGS ${VM_APPEND:-}" \
        "$@" </dev/null
    rc=$?
    t1=$(date +%s.%N)
    # the serial line ends lines with CR LF
    [ -f "$log" ] && sed -i 's/\r$//' "$log"
    VM_BOOT_SECONDS=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')
    vm_log "guest ran for ${VM_BOOT_SECONDS}s (qemu status $rc)"
    return $rc
}

vm_expect() {
    grep -qE -- "$2" "$1" || {
        echo "---- guest console ($1) ----" >&2
        tail -n 60 "$1" >&2
        vm_fail "guest console has no line matching '$2'"
    }
}

vm_check_fs() {
    local out
    out=$(e2fsck -fn "$1" 2>&1) || {
        echo "$out" >&2
        vm_fail "e2fsck -fn $1 is not clean"
    }
}

vm_cat() {
    debugfs -R "cat $2" "$1" 2>/dev/null
}

vm_token() { od -A n -N 8 -t x1 /dev/urandom | tr -d ' \n'; }
vm_sha() { sha256sum "$1" | cut -d' ' -f1; }

# vm_make_disks DIR: DIR/base.raw, a 64 MiB ext4 made by mke2fs -d, and
# DIR/new.raw, a copy into which debugfs wrote /new-only.txt and
# /newdir/blob.bin (a few blocks change, as on a real disk).  Sets
# VM_NEW_TEXT (first line of /new-only.txt) and VM_BLOB_SHA.
vm_make_disks() {
    local d=$1
    mkdir -p "$d/tree/data" "$d/add"
    echo "base marker" >"$d/tree/marker.txt"
    echo "the guest deletes this file" >"$d/tree/delete-me.txt"
    head -c 1048576 /dev/urandom >"$d/tree/data/base.bin"
    mke2fs -q -F -t ext4 -L rblockvm -d "$d/tree" "$d/base.raw" 64M >/dev/null || vm_fail "mke2fs -d failed"
    cp --sparse=always "$d/base.raw" "$d/new.raw"
    VM_NEW_TEXT="only-in-new-$(vm_token)"
    echo "$VM_NEW_TEXT" >"$d/add/new-only.txt"
    head -c 262144 /dev/urandom >"$d/add/blob.bin"
    VM_BLOB_SHA=$(vm_sha "$d/add/blob.bin")
    debugfs -w -f - "$d/new.raw" >"$d/debugfs.log" 2>&1 <<END || vm_fail "debugfs -w failed"
write $d/add/new-only.txt new-only.txt
mkdir newdir
write $d/add/blob.bin newdir/blob.bin
END
    [ "$(vm_cat "$d/new.raw" /new-only.txt)" = "$VM_NEW_TEXT" ] || vm_fail "debugfs did not write new.raw"
    vm_check_fs "$d/new.raw"
}

# VM_APPEND for a guest that reads what vm_make_disks made and writes TOKEN.
vm_append_for() {
    echo "rb.mode=$1 rb.token=$2 rb.read=/marker.txt,/new-only.txt rb.sum=/newdir/blob.bin,/data/base.bin"
}

# vm_check_console LOG TOKEN BASE_BIN_SHA: every marker the guest must
# print; sets VM_GUEST_SHA (sha256 of the file the guest wrote).
vm_check_console() {
    local log=$1 token=$2 base_sha=$3
    if grep -q '^RB-FAIL' "$log"; then
        echo "---- guest console ($log) ----" >&2
        tail -n 60 "$log" >&2
        vm_fail "the guest reported: $(grep -m1 '^RB-FAIL' "$log")"
    fi
    vm_expect "$log" '^RB-MOUNT: '
    vm_expect "$log" '^RB-READ /marker\.txt base marker$'
    vm_expect "$log" "^RB-READ /new-only\\.txt $VM_NEW_TEXT\$"
    vm_expect "$log" "^RB-SUM /newdir/blob\\.bin $VM_BLOB_SHA\$"
    vm_expect "$log" "^RB-SUM /data/base\\.bin $base_sha\$"
    vm_expect "$log" '^RB-SHA256 /guest/big\.bin [0-9a-f]{64}$'
    VM_GUEST_SHA=$(sed -n 's|^RB-SHA256 /guest/big\.bin \([0-9a-f]*\).*|\1|p' "$log" | tr -d '\r' | head -n 1)
    vm_expect "$log" "^RB-REREAD /guest/big\\.bin $VM_GUEST_SHA\$"
    vm_expect "$log" "^RB-REREAD /guest/token\\.txt $token\$"
    vm_expect "$log" '^RB-DONE: ok'
}

# vm_check_written RAW TOKEN: the guest's writes are in RAW (a raw copy
# of the image after the guest powered off) and the file system is clean.
vm_check_written() {
    local raw=$1 token=$2 got
    vm_check_fs "$raw"
    got=$(vm_cat "$raw" /guest/token.txt)
    [ "$got" = "$token" ] || vm_fail "/guest/token.txt holds '$got', not '$token'"
    debugfs -R "dump /guest/big.bin $raw.big" "$raw" >/dev/null 2>&1
    [ -f "$raw.big" ] && [ "$(vm_sha "$raw.big")" = "$VM_GUEST_SHA" ] ||
        vm_fail "/guest/big.bin in the image differs from what the guest wrote"
    rm -f "$raw.big"
    got=$(vm_cat "$raw" /marker.txt)
    [ "$got" = "$(printf 'base marker\nguest %s' "$token")" ] || vm_fail "/marker.txt holds '$got'"
    [ "$(vm_cat "$raw" /new-only.txt)" = "$VM_NEW_TEXT" ] || vm_fail "/new-only.txt lost"
    if grep -q 'Inode:' <<< "$(debugfs -R "stat /delete-me.txt" "$raw" 2>&1)"; then
        vm_fail "/delete-me.txt is still in the image"
    fi
}

# vm_qemu_img_check IMAGE: qemu-img check must report no errors and no leaks.
vm_qemu_img_check() {
    local out
    out=$(qemu-img check "$1" 2>&1) || {
        echo "$out" >&2
        vm_fail "qemu-img check $1 failed"
    }
}

# vm_serve_start IMAGE unix:PATH|tcp:127.0.0.1:PORT: start the NBD server
# (`rblock serve`, or qemu-nbd when VM_REFERENCE=qemu) in the background and
# wait until it listens (polls for the socket; no fixed sleeps).  Sets
# VM_SERVE_PID.  Returns 2 when the port was taken (the caller picks
# another).
vm_serve_start() {
    local image=$1 addr=$2 i
    if [ "${VM_REFERENCE:-}" = qemu ]; then
        case "$addr" in
            unix:*) qemu-nbd --persistent -f qcow2 -k "${addr#unix:}" "$image" >serve.log 2>&1 & ;;
            tcp:*) local hp=${addr#tcp:}
                qemu-nbd --persistent -f qcow2 -b "${hp%:*}" -p "${hp##*:}" "$image" >serve.log 2>&1 & ;;
        esac
    else
        "$RBLOCK" serve --nbd "$addr" "$image" >serve.log 2>&1 &
    fi
    VM_SERVE_PID=$!
    VM_PIDS="$VM_PIDS $VM_SERVE_PID"
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$VM_SERVE_PID" 2>/dev/null; then
            wait "$VM_SERVE_PID"
            cat serve.log >&2
            grep -qiE 'address already in use' serve.log && return 2
            vm_fail "the NBD server exited before it listened on $addr"
        fi
        # Ready means it answers an NBD handshake (rblock binds its
        # listeners before it opens the image, which may still fail).
        case "$addr" in
            unix:*) [ -S "${addr#unix:}" ] &&
                qemu-img info "nbd+unix:///?socket=${addr#unix:}" >/dev/null 2>&1 && return 0 ;;
            tcp:*) vm_port_listening "${addr##*:}" &&
                qemu-img info "nbd://${addr#tcp:}" >/dev/null 2>&1 && return 0 ;;
        esac
        sleep 0.05   # polling for the listener, bounded to 30 s
    done
    vm_fail "the NBD server did not listen on $addr within 30 s"
}

# vm_serve_stop: SIGTERM (clean shutdown: flush, close the image) and wait;
# rblock must then exit 0 (a clean shutdown on SIGINT/SIGTERM).
vm_serve_stop() {
    local rc i
    kill -TERM "$VM_SERVE_PID" 2>/dev/null
    for ((i = 0; i < 1200; i++)); do   # bounded: 60 s to finish and flush
        kill -0 "$VM_SERVE_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$VM_SERVE_PID" 2>/dev/null; then
        kill -KILL "$VM_SERVE_PID"
        wait "$VM_SERVE_PID"
        vm_fail "the NBD server did not stop within 60 s of SIGTERM"
    fi
    wait "$VM_SERVE_PID"
    rc=$?
    VM_PIDS=${VM_PIDS/ $VM_SERVE_PID/}
    [ "$rc" = 143 ] && [ "${VM_REFERENCE:-}" = qemu ] && rc=0   # qemu-nbd may die by the signal
    case "$rc" in
        0) ;;
        *) cat serve.log >&2
            vm_fail "the NBD server exited with status $rc after SIGTERM" ;;
    esac
}

vm_port_listening() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# A free loopback TCP port (the server still checks: vm_serve_start returns 2
# if someone took it meanwhile).
vm_free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        vm_port_listening "$p" || { echo "$p"; return; }
    done
}

# The overlay the NBD tests serve: new.raw's changes over base.raw, made
# by QEMU's own recipe so that these tests depend on `rblock serve` only.
vm_make_overlay() {
    qemu-img convert -O qcow2 -B base.raw -F raw new.raw "$1" || vm_fail "qemu-img convert -B failed"
    vm_qemu_img_check "$1"
}
