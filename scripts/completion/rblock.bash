# bash completion for rblock                          -*- shell-script -*-
# SPDX-License-Identifier: MIT

_rblock()
{
    local cur prev words cword
    _init_completion || return

    local cmds="info map check create convert diff delta serve bitmap commit rebase help measure compare resize amend snapshot"
    if [[ $cword -eq 1 ]]; then
        COMPREPLY=($(compgen -W "$cmds --help --version --inspect" -- "$cur"))
        return
    fi

    local opts=""
    case ${words[1]} in
        info)    opts="--output= --backing-chain -f -U --force-share --help" ;;
        map)     opts="--output= --bitmap -f -U --force-share --help" ;;
        check)   opts="-r --output= -f -U --force-share --help" ;;
        create)  opts="-f -o -b -F -q --help" ;;
        convert) opts="-f -O -o -c -p -q -U -n -m -B -F -b --force-share --bitmaps --skip-broken-bitmaps --target-is-zero -S --help" ;;
        diff)    opts="--sector-size --output= --count --bitmap -p -f -F -U --force-share --help" ;;
        delta)   opts="-o -b -f -F -p -q -U --bitmap --force-share --output-format --from-snap --to-snap --help" ;;
        bitmap)  opts="--add --remove --clear --enable --disable --merge -g -b -F -f
                       --help" ;;
        serve)   opts="--nbd --rpc --read-only --load-snapshot -l --export-name --description --bitmap -B
                       --max-connections --max-inflight --handshake-timeout --run
                       --tls= --tls-cert --tls-psk --tls-verify-peer --format -f -U --force-share --help
                       --export --socket -k --port -p --bind -b -D --snapshot -s --persistent -t
                       --shared -e --fork --pid-file --discard= --detect-zeroes= --verbose -v
                       --quiet -q --print-uri --rpc-insecure"
                 [[ $prev == -l ]] && return ;;        # a snapshot id or name
        measure) opts="--output= --size -O -o -f -U --force-share --help" ;;
        compare) opts="-f -F -T -p -q -s -U --force-share --help" ;;
        resize)  opts="--shrink --preallocation= -f -q --help" ;;
        amend)   opts="-o -f -p -q -t --force --help" ;;
        snapshot) opts="-l -c -a -d -f -U --force-share --help"
                 [[ $prev == -[cad] ]] && return ;;   # a snapshot name
        commit)  opts="-b -d -f -t -p -q --help" ;;
        rebase)  opts="-b -F -f -t -u -c -p -q --help" ;;
        help)    COMPREPLY=($(compgen -W "$cmds" -- "$cur")); return ;;
    esac

    case $prev in
        -f|-F|-O|--format)
            COMPREPLY=($(compgen -W "qcow2 raw" -- "$cur")); return ;;
        -r)
            COMPREPLY=($(compgen -W "leaks all" -- "$cur")); return ;;
        --tls-cert)
            _filedir -d; return ;;
        --nbd|--rpc|--export-name|--description|--max-connections|--max-inflight|\
        --handshake-timeout|--run|--sector-size|-o|-x|-d|-m|-B|--bitmap|--merge|-g|--size|-T|-t|\
        --load-snapshot)
            return ;;
    esac
    case $cur in
        --output=*)
            if [ "${words[1]}" = map ]; then
                COMPREPLY=($(compgen -W "human json svg html" -- "${cur#--output=}")); return
            fi
            COMPREPLY=($(compgen -W "human json" -- "${cur#--output=}")); return ;;
        --tls=*)
            COMPREPLY=($(compgen -W "off on require" -- "${cur#--tls=}")); return ;;
        -*)
            COMPREPLY=($(compgen -W "$opts" -- "$cur"))
            [[ ${COMPREPLY-} == *= ]] && compopt -o nospace
            return ;;
    esac
    _filedir
} &&
    complete -F _rblock rblock
