/* The least a FUSE walk can cost on a machine: a read-only tree held in memory, answered by libfuse's
 * low-level API in C, with the requests nccidfs makes a walk send (OPENDIR answered ENOSYS so the kernel
 * sends no OPENDIR or RELEASEDIR and caches listings; READDIRPLUS giving each sub-directory its
 * attributes; files listed without attributes; names and attributes valid for 300 s). No network, no
 * Python: what is left is the kernel's round trips and find's own work. bench/floor.py builds and runs it.
 *
 *     walkfloor KEYS MOUNTPOINT     (KEYS: one path a line, sorted as S3 lists them)
 *
 * Prints the requests it answered, by kind, when unmounted.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define VALID_FOR 300.0

struct node {
    char *name;
    int is_dir;
    size_t *children; /* node numbers; inode = node + 1 */
    size_t count, room;
};

static struct node *nodes;
static size_t node_count, node_room;
/* Every node by (parent, name), open addressing: a LOOKUP costs a hash, not a scan of its folder. */
static size_t *by_name, by_name_mask;
static size_t *parent_of;
static atomic_ulong n_lookup, n_getattr, n_opendir, n_readdir, n_readdirplus;

static size_t add_node(const char *name, size_t len, int is_dir) {
    if (node_count == node_room) {
        node_room = node_room ? node_room * 2 : 1024;
        nodes = realloc(nodes, node_room * sizeof *nodes);
    }
    nodes[node_count] = (struct node){strndup(name, len), is_dir, NULL, 0, 0};
    return node_count++;
}

static void add_child(size_t parent, size_t child) {
    struct node *p = &nodes[parent];
    if (p->count == p->room) {
        p->room = p->room ? p->room * 2 : 4;
        p->children = realloc(p->children, p->room * sizeof *p->children);
    }
    p->children[p->count++] = child;
}

/* Keys sorted as S3 lists them keep each folder's keys together, so the open folders are a stack. */
static void load(FILE *keys) {
    size_t stack[64], depth = 1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    stack[0] = add_node("", 0, 1);
    while ((len = getline(&line, &cap, keys)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        size_t level = 1;
        char *part = line;
        for (char *slash; (slash = strchr(part, '/')) != NULL; part = slash + 1, level++) {
            size_t n = (size_t)(slash - part);
            if (level < depth && strlen(nodes[stack[level]].name) == n && !strncmp(nodes[stack[level]].name, part, n))
                continue;
            if (level >= 64)
                exit(2);
            depth = level;
            stack[depth] = add_node(part, n, 1);
            add_child(stack[depth - 1], stack[depth]);
            depth++;
        }
        depth = level;
        add_child(stack[level - 1], add_node(part, strlen(part), 0));
    }
    free(line);
}

static size_t name_hash(size_t parent, const char *name) {
    size_t h = 1469598103934665603ULL ^ parent;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 1099511628211ULL;
    return h;
}

/* The index of (parent, name): filled after load, read only while serving. Slot value 0 is empty (the
 * root, node 0, is never a child). */
static void index_names(void) {
    size_t size = 1024;
    while (size < 2 * node_count)
        size *= 2;
    by_name = calloc(size, sizeof *by_name);
    parent_of = calloc(node_count, sizeof *parent_of);
    by_name_mask = size - 1;
    for (size_t parent = 0; parent < node_count; parent++)
        for (size_t i = 0; i < nodes[parent].count; i++) {
            size_t child = nodes[parent].children[i], slot = name_hash(parent, nodes[child].name) & by_name_mask;
            while (by_name[slot])
                slot = (slot + 1) & by_name_mask;
            by_name[slot] = child;
            parent_of[child] = parent;
        }
}

static size_t find_child(size_t parent, const char *name) {
    for (size_t slot = name_hash(parent, name) & by_name_mask; by_name[slot]; slot = (slot + 1) & by_name_mask) {
        size_t node = by_name[slot];
        if (parent_of[node] == parent && !strcmp(nodes[node].name, name))
            return node;
    }
    return 0;
}

static void attributes(size_t node, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = node + 1;
    st->st_mode = nodes[node].is_dir ? S_IFDIR | 0555 : S_IFREG | 0444;
    st->st_nlink = nodes[node].is_dir ? 2 : 1;
    st->st_size = nodes[node].is_dir ? 0 : 4096;
}

static void entry_of(size_t node, struct fuse_entry_param *e) {
    memset(e, 0, sizeof *e);
    e->ino = node + 1;
    e->attr_timeout = e->entry_timeout = VALID_FOR;
    attributes(node, &e->attr);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    atomic_fetch_add(&n_lookup, 1);
    size_t child = find_child(parent - 1, name);
    if (!child) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param e;
    entry_of(child, &e);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add(&n_getattr, 1);
    struct stat st;
    attributes(ino - 1, &st);
    fuse_reply_attr(req, &st, VALID_FOR);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    atomic_fetch_add(&n_opendir, 1);
    fuse_reply_err(req, ENOSYS);
}

static void list(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, int plus) {
    struct node *d = &nodes[ino - 1];
    char *buf = malloc(size);
    size_t used = 0;
    for (size_t i = (size_t)offset; i < d->count; i++) {
        size_t child = d->children[i], length;
        struct fuse_entry_param e;
        entry_of(child, &e);
        if (plus && !nodes[child].is_dir)
            e.ino = 0; /* a file listed without attributes, as nccidfs lists it */
        length = plus ? fuse_add_direntry_plus(req, buf + used, size - used, nodes[child].name, &e, (off_t)i + 1)
                      : fuse_add_direntry(req, buf + used, size - used, nodes[child].name, &e.attr, (off_t)i + 1);
        if (used + length > size)
            break;
        used += length;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add(&n_readdir, 1);
    list(req, ino, size, offset, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add(&n_readdirplus, 1);
    list(req, ino, size, offset, 1);
}

static const struct fuse_lowlevel_ops operations = {
    .lookup = op_lookup,
    .getattr = op_getattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
};

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: walkfloor KEYS MOUNTPOINT\n");
        return 2;
    }
    FILE *keys = fopen(argv[1], "r");
    if (!keys) {
        perror(argv[1]);
        return 1;
    }
    load(keys);
    fclose(keys);
    index_names();
    char *fuse_argv[] = {argv[0], "-o", "ro,fsname=walkfloor,default_permissions", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
    struct fuse_session *se = fuse_session_new(&args, &operations, sizeof operations, NULL);
    if (!se || fuse_set_signal_handlers(se) || fuse_session_mount(se, argv[2]))
        return 1;
    struct fuse_loop_config *loop = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(loop, 64);
    fuse_loop_cfg_set_idle_threads(loop, 64);
    int status = fuse_session_loop_mt(se, loop);
    fuse_loop_cfg_destroy(loop);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    printf("nodes %zu lookup %lu getattr %lu opendir %lu readdir %lu readdirplus %lu\n", node_count,
           atomic_load(&n_lookup), atomic_load(&n_getattr), atomic_load(&n_opendir), atomic_load(&n_readdir),
           atomic_load(&n_readdirplus));
    return status ? 1 : 0;
}
