/*
 * vgworker.so: run one kind of sipsockd worker under Valgrind, leaving the supervisor native.
 *
 * Why: sipsockd's supervisor starts each worker by exec'ing /proc/self/exe. Under
 * `valgrind --trace-children=yes` that path names Valgrind's own tool binary by the time the child
 * loads it, so the worker cannot start (Valgrind 3.19: "mmap(0x58000000, 4096) failed in UME").
 * Preloaded into the native supervisor (LD_PRELOAD), this library catches the spawn of
 * /proc/self/exe whose arguments contain `--kind KIND` (KIND from SIPSOCKD_VG_KIND) and runs
 * instead:   valgrind ARGS... <the supervisor's real executable> <the worker's arguments>
 * with ARGS taken from SIPSOCKD_VG_ARGS (split on spaces; no quoting). Every other spawn passes
 * through untouched. The child's environment loses LD_PRELOAD and the SIPSOCKD_VG_* variables, so
 * nothing of this library runs inside the measured worker.
 *
 * Rust's std::process::Command uses posix_spawn(p) when it can and fork + execvp otherwise: both
 * are caught (and execve/execv, for completeness). Build: cc -shared -fPIC -O2 -o vgworker.so
 * vgworker.c -ldl. Used by scripts/bench.sh --only instructions; not part of sipsockd.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define MAX_VG_ARGS 64

/* Is this a spawn of the worker kind we were asked to wrap? */
static int wanted(const char *path, char *const argv[])
{
    const char *kind = getenv("SIPSOCKD_VG_KIND");
    int i;

    if (path == NULL || kind == NULL || strcmp(path, "/proc/self/exe") != 0)
        return 0;
    for (i = 0; argv[i] != NULL && argv[i + 1] != NULL; i++)
        if (strcmp(argv[i], "--kind") == 0 && strcmp(argv[i + 1], kind) == 0)
            return 1;
    return 0;
}

/* The environment without LD_PRELOAD and SIPSOCKD_VG_*; malloc'ed array of the same strings. */
static char **clean_env(char *const envp[])
{
    size_t n = 0, k = 0, i;
    char **out;

    while (envp != NULL && envp[n] != NULL)
        n++;
    out = calloc(n + 1, sizeof(char *));
    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        if (strncmp(envp[i], "LD_PRELOAD=", 11) == 0 || strncmp(envp[i], "SIPSOCKD_VG_", 12) == 0)
            continue;
        out[k++] = envp[i];
    }
    out[k] = NULL;
    return out;
}

/*
 * argv for valgrind: valgrind, SIPSOCKD_VG_ARGS..., the real executable, argv[1..].
 * `words` receives the strdup'ed copy of SIPSOCKD_VG_ARGS that the array points into.
 */
static char **vg_argv(char *const argv[], char *exe, char **words)
{
    const char *args = getenv("SIPSOCKD_VG_ARGS");
    size_t n = 0, k = 0, i;
    char **out;
    char *tok, *save = NULL;

    while (argv[n] != NULL)
        n++;
    out = calloc(n + MAX_VG_ARGS + 3, sizeof(char *));
    *words = strdup(args != NULL ? args : "");
    if (out == NULL || *words == NULL)
        return NULL;
    out[k++] = "valgrind";
    for (tok = strtok_r(*words, " ", &save); tok != NULL && k < MAX_VG_ARGS;
         tok = strtok_r(NULL, " ", &save))
        out[k++] = tok;
    out[k++] = exe;
    for (i = 1; i < n; i++)
        out[k++] = argv[i];
    out[k] = NULL;
    return out;
}

/* The real path of /proc/self/exe, in `buf` (PATH_MAX). 0 on success. */
static int real_exe(char *buf)
{
    ssize_t r = readlink("/proc/self/exe", buf, PATH_MAX - 1);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    return 0;
}

typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                        const posix_spawnattr_t *, char *const[], char *const[]);

static int spawn_wrapped(const char *sym, pid_t *pid, const char *path,
                         const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                         char *const argv[], char *const envp[])
{
    spawn_fn next = (spawn_fn)dlsym(RTLD_NEXT, sym);
    char exe[PATH_MAX], *words = NULL, **av, **ev;
    int r;

    if (next == NULL)
        return 38; /* ENOSYS */
    if (!wanted(path, argv) || real_exe(exe) != 0)
        return next(pid, path, fa, attr, argv, envp);
    av = vg_argv(argv, exe, &words);
    ev = clean_env(envp);
    if (av == NULL || ev == NULL)
        return 12; /* ENOMEM */
    /* posix_spawnp searches PATH for "valgrind"; posix_spawn would need a path. */
    r = ((spawn_fn)dlsym(RTLD_NEXT, "posix_spawnp"))(pid, "valgrind", fa, attr, av, ev);
    free(av);
    free(ev);
    free(words);
    return r;
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    return spawn_wrapped("posix_spawn", pid, path, fa, attr, argv, envp);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    return spawn_wrapped("posix_spawnp", pid, file, fa, attr, argv, envp);
}

/* After fork (Rust's fallback when it cannot use posix_spawn): replace the exec. This allocates
 * in the child, which glibc allows (its fork takes the allocator's locks and resets them in the
 * child); the path is not taken today, where Rust spawns the workers with posix_spawn. */
static int exec_wrapped(const char *path, char *const argv[], char *const envp[])
{
    typedef int (*execvpe_fn)(const char *, char *const[], char *const[]);
    char exe[PATH_MAX], *words = NULL, **av, **ev;

    if (real_exe(exe) != 0)
        return -1;
    av = vg_argv(argv, exe, &words);
    ev = clean_env(envp);
    if (av == NULL || ev == NULL)
        return -1;
    (void)path;
    return ((execvpe_fn)dlsym(RTLD_NEXT, "execvpe"))("valgrind", av, ev);
}

int execve(const char *path, char *const argv[], char *const envp[])
{
    typedef int (*execve_fn)(const char *, char *const[], char *const[]);
    if (wanted(path, argv))
        return exec_wrapped(path, argv, envp);
    return ((execve_fn)dlsym(RTLD_NEXT, "execve"))(path, argv, envp);
}

int execv(const char *path, char *const argv[])
{
    return execve(path, argv, environ);
}

int execvp(const char *file, char *const argv[])
{
    typedef int (*execvp_fn)(const char *, char *const[]);
    if (wanted(file, argv))
        return exec_wrapped(file, argv, environ);
    return ((execvp_fn)dlsym(RTLD_NEXT, "execvp"))(file, argv);
}
