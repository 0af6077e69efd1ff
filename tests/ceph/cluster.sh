#!/bin/bash
# A one-node Ceph cluster for the tests and benchmarks: one monitor and one
# OSD on 127.0.0.1, everything (data, sockets, logs, pids) in DIR.
#
#   tests/ceph/cluster.sh start DIR [POOL]   start it; DIR/ceph.conf is the
#                                            client configuration (CEPH_CONF)
#   tests/ceph/cluster.sh stop DIR           stop it by its recorded pids
#
# The OSD keeps its objects in memory (memstore) unless RBLOCK_CEPH_STORE=
# bluestore, which uses a sparse file in DIR (memstore's memory grows to
# about twice the data written: use bluestore above a few hundred MiB).
# Authentication is off and the monitor listens on loopback only.
# Nothing here sleeps blindly: each wait polls the cluster with a bound.
set -euo pipefail
trap 'echo "cluster.sh: line $LINENO failed: $BASH_COMMAND (logs in ${dir:-?}/log)" >&2' ERR

cmd=${1:-}
dir=${2:-}
pool=${3:-rbd}
[ -n "$cmd" ] && [ -n "$dir" ] || {
    echo "usage: $0 start|stop DIR [POOL]" >&2
    exit 2
}

# poll CMD... until it succeeds, at most $1 seconds
poll() {
    local limit=$1 what=$2 start
    shift 2
    start=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        if [ $(($(date +%s) - start)) -ge "$limit" ]; then
            echo "cluster.sh: $what not ready after ${limit}s (logs in $dir/log)" >&2
            return 1
        fi
        sleep 0.1
    done
}

# CMD... once it succeeds (a fresh monitor may refuse a client's first
# command, sent before the client had its monitor map: "wrong fsid"),
# at most 30 tries
retry() {
    local i
    for i in $(seq 30); do
        "$@" && return 0
        sleep 0.2
    done
    "$@"
}

stop_pid() { # name: TERM, wait (bounded), then KILL
    local f=$dir/run/$1.pid pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

case "$cmd" in
stop)
    # the OSD first: a monitor gone first leaves the OSD retrying
    stop_pid osd.0
    stop_pid mon.a
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start|stop DIR [POOL]" >&2
    exit 2
    ;;
esac

for t in ceph-mon ceph-osd ceph monmaptool ceph-authtool rados; do
    command -v "$t" >/dev/null || {
        echo "cluster.sh: $t not found (apt-get install ceph-mon ceph-osd ceph-common)" >&2
        exit 3
    }
done

mkdir -p "$dir"/{mon,osd,run,log}
dir=$(cd "$dir" && pwd)
# a free loopback port for the monitor
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fsid=$(cat /proc/sys/kernel/random/uuid)
store=${RBLOCK_CEPH_STORE:-memstore}
conf=$dir/ceph.conf

cat >"$conf" <<CONF
[global]
fsid = $fsid
mon_host = v1:127.0.0.1:$port
ms_bind_msgr2 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
pid_file = $dir/run/\$name.pid
log_file = $dir/log/\$name.log
mon_cluster_log_file = $dir/log/cluster.log
keyring = $dir/keyring
[mon]
mon_data = $dir/mon/\$cluster-\$id
[osd]
osd_data = $dir/osd/\$cluster-\$id
osd_objectstore = $store
# the OSD's own crush commands at start-up can race its first monitor map
# (sent with a null fsid and refused): the script places it instead
osd_crush_update_on_start = false
osd_class_update_on_start = false
memstore_device_bytes = 4294967296
bluestore_block_path = $dir/osd/block
bluestore_block_size = 21474836480
bluestore_block_create = true
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
CONF

ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --addv a "[v1:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
ceph-mon -c "$conf" -i a 2>>"$dir/log/daemons.err"
poll 30 "monitor" ceph -c "$conf" --connect-timeout 5 -s

# the OSD's uuid is the one the monitor records for its id
uuid=$(cat /proc/sys/kernel/random/uuid)
id=$(retry ceph -c "$conf" osd new "$uuid" 2>>"$dir/log/client.err")
retry ceph -c "$conf" osd crush add "osd.$id" 1.0 root=default >/dev/null 2>&1
mkdir -p "$dir/osd/ceph-$id"
ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >>"$dir/log/daemons.err" 2>&1
ceph-osd -c "$conf" -i "$id" 2>>"$dir/log/daemons.err"
poll 60 "osd.$id" sh -c "ceph -c '$conf' osd dump | grep -q '^osd.$id up'"

retry ceph -c "$conf" osd pool create "$pool" 8 8 >/dev/null 2>&1
retry ceph -c "$conf" osd pool application enable "$pool" rbd >/dev/null 2>&1
# the pool's placement groups are active when listing it answers
poll 60 "pool $pool" rados -c "$conf" --rados-osd-op-timeout 2 -p "$pool" ls
echo "$conf"
