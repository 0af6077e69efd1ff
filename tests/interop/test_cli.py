"""The command line's conventions: every usage error is one line naming the
command and how to get help, with exit status 1 (2 for diff, as cmp);
`rblock help CMD`, -V; qemu-img's words name rblock's equivalent; create
-f raw makes what qemu-img create -f raw makes."""
import os
import subprocess

import pytest

RBLOCK = os.environ["RBLOCK"]
COMMANDS = ["info", "map", "check", "create", "convert", "diff", "delta", "serve", "commit",
            "rebase"]


def run(*args, **kw):
    return subprocess.run([RBLOCK, *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_usage_errors_are_one_line(cmd):
    want_rc = 2 if cmd == "diff" else 1
    for args, what in [(["-Z"], "invalid option -Z"),
                       (["--no-such-option"], "invalid option '--no-such-option'"),
                       ([], "needs ")]:
        r = run(cmd, *args)
        assert r.returncode == want_rc, (cmd, args, r)
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (cmd, args, r.stderr)
        assert lines[0].startswith(f"rblock {cmd}: {what}"), lines[0]
        assert lines[0].endswith(f"(try 'rblock {cmd} --help')"), lines[0]
        assert r.stdout == ""


def test_missing_argument_named():
    r = run("convert", "-O")
    assert r.returncode == 1
    assert r.stderr == "rblock convert: option -O needs an argument (try 'rblock convert --help')\n"
    r = run("serve", "--nbd")
    assert r.returncode == 1
    assert r.stderr == "rblock serve: option '--nbd' needs an argument (try 'rblock serve --help')\n"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_command_is_the_commands_help(cmd):
    a, b = run("help", cmd), run(cmd, "--help")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith(f"usage: rblock {cmd}")


def test_version_and_unknown_commands():
    assert run("-V").stdout == run("--version").stdout
    assert run("-V").stdout.startswith("rblock ")
    r = run("dd", "a", "b")  # a qemu-img word rblock spells differently
    assert r.returncode == 1 and "rblock convert" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unknown command" in r.stderr


@pytest.mark.parametrize("size", ["1000", "1.5G", "512k", "2T"])
def test_create_raw_as_qemu_img(tmp_path, size):
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    r = run("create", "-f", "raw", str(ours), size)
    assert r.returncode == 0, r.stderr
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(theirs), size], check=True)
    assert os.path.getsize(ours) == os.path.getsize(theirs)
    assert os.stat(ours).st_blocks == 0  # sparse
    r = run("create", "-f", "raw", "-b", str(theirs), str(tmp_path / "x.raw"), "1M")
    assert r.returncode == 1 and not (tmp_path / "x.raw").exists()
