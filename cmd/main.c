/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/io.h"

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"info", cmd_info, "show an image's header, features, layout and chain"},
    {"map", cmd_map, "show the guest-to-host mapping (as qemu-img map)"},
    {"check", cmd_check, "check an image for leaks and corruption"},
    {"create", cmd_create, "create a new qcow2 image"},
    {"convert", cmd_convert, "convert between raw and qcow2"},
    {"diff", cmd_diff, "list the sectors where two disks differ"},
    {"delta", cmd_delta, "write a qcow2 overlay holding only what changed"},
    {"serve", cmd_serve, "serve an image over NBD and JSON-RPC"},
    {"bitmap", cmd_bitmap, "add, remove, clear, enable, disable, merge dirty bitmaps"},
    {"measure", cmd_measure, "the size a new image needs (as qemu-img measure)"},
    {"compare", cmd_compare, "compare two images' guest contents (as qemu-img compare)"},
    {"resize", cmd_resize, "grow or shrink an image (as qemu-img resize)"},
    {"amend", cmd_amend, "change a qcow2 image's options (as qemu-img amend)"},
    {"commit", cmd_commit, "merge an overlay into its backing file"},
    {"rebase", cmd_rebase, "change an overlay's backing file, keeping its content"},
    {"snapshot", cmd_snapshot, "list, create, apply, delete internal snapshots"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock <command> [options] ...\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n  --inspect IMAGE   same as 'info IMAGE'\n"
               "  -V, --version     print the version\n"
               "\nrun 'rblock help <command>' for a command's options\n");
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

/* qemu-img and qemu-nbd words a user may type, and what rblock calls it. */
static const char *equivalent_of(const char *name)
{
    static const struct {
        const char *theirs, *ours;
    } words[] = {
        {"dd", "rblock convert"},
        {"nbd", "rblock serve"},
        {"qemu-nbd", "rblock serve"},
        {"inspect", "rblock info"},
    };

    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcmp(name, words[i].theirs) == 0)
            return words[i].ours;
    return NULL;
}

/* rblock help [COMMAND]: the command's own --help. */
static int help(int argc, char **argv)
{
    const struct command *c;
    char *args[] = {argv[1], (char *)"--help", NULL};

    opterr = 0; /* usage errors are ours: one line each (bad_option) */
    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    c = find_command(argv[1]);
    if (!c) {
        complain("help: unknown command '%s' (try 'rblock --help')", argv[1]);
        return 1;
    }
    return c->fn(2, args);
}

int main(int argc, char **argv)
{
    struct rb_io_fault_plan plan; /* crash tests (tests/crash): see io.h */
    const char *fault = getenv("RBLOCK_FAULT");
    if (fault && (rb_io_fault_parse(fault, &plan) < 0 || rb_io_fault_set(&plan) < 0))
        return complain("RBLOCK_FAULT: cannot use plan '%s'", fault), 1;
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("rblock %s\n", RBLOCK_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "--inspect") == 0) {
        argv[1] = (char *)"info";
        return cmd_info(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "help") == 0)
        return help(argc - 1, argv + 1);
    const struct command *c = find_command(argv[1]);
    if (c)
        return c->fn(argc - 1, argv + 1);
    const char *eq = equivalent_of(argv[1]);
    if (eq)
        complain("unknown command '%s'; rblock's equivalent: %s", argv[1], eq);
    else
        complain("unknown command '%s' (try 'rblock --help')", argv[1]);
    return 1;
}
