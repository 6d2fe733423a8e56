# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The sandbox a child enters (src/subprocess/sandbox/ makes its parts).

The parent made the scratch folder, the pids cgroup, the landlock ruleset
and the socket filter, and tells the child where they are: in ENV_SANDBOX
for a started child (which inherits the ruleset's fd), in the zygote's
ZYGOTE_FORK_SANDBOXED request for a forked one (the fd passed with it).
The child enters it in three steps, before any user code runs:
- sandbox_outer, in the process the parent sees, before it forks anything:
  waits until the parent has moved it into its cgroup, so that every
  process of the sandbox is counted, and sets the open-file limit;
- contain.py makes the namespaces (_unshare_sandbox_namespaces) and forks
  the worker into them;
- enter_sandbox, in the worker: its scratch folder as working folder,
  TMPDIR and HOME; every mount read-only but its writable folders (landlock
  does not govern a file's metadata: the owner of a file, which root in a
  user namespace still is, could chmod, chown or touch it); then it gives
  up every capability (else it could make the mounts writable again), and
  sets no_new_privs, the ruleset and the filter (which refuses mounts and
  namespaces too).
A step that fails ends the child with the reason on stderr: the parent
quotes it in its Startup error, and no user code runs unsandboxed.
"""

import os

_MS_BIND = 0x1000
_SHM = b"/dev/shm"
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def parse_sandbox(text):
    """The settings in `key=value` lines, as a dict."""
    settings = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            settings[key] = value
    return settings


def _path(settings, key):
    """A path of the settings (hex of its bytes), as str."""
    return os.fsdecode(bytes.fromhex(settings.get(key, "")))


def take_sandbox_setting():
    """A started child's settings (ENV_SANDBOX, removed), or None."""
    setting = os.environ.pop(ENV_SANDBOX, None)
    return None if setting is None else parse_sandbox(setting)


def sandbox_failed(what, why):
    """Ends the child: it cannot be sandboxed as asked."""
    _say("could not enter the sandbox: %s: %s" % (what, why))
    os._exit(1)


def close_inherited_fds(keep):
    """Closes every fd but 0, 1, 2 and `keep`: what this process inherited
    from its parent's own parents (a service manager's socket, a log file)
    would reach past the rules, which govern only what is opened from now."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        # Without /proc: every fd below the limit, which an fd is (unless
        # the limit was lowered after it was opened).
        import resource

        fds = range(3, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own fd, closed already


_CGROUP_WAIT = 10.0
"""How long a child waits for its parent to move it into its cgroup."""


def _wait_for_cgroup(group):
    """Waits until the parent has moved this process into its pids cgroup
    `group` (a move can wait for a grace period of the kernel's, which the
    parent pays while this one starts): nothing forks before it is counted."""
    import time

    deadline = time.monotonic() + _CGROUP_WAIT
    while True:
        try:
            with open("/proc/self/cgroup") as own:
                if any(line.rstrip("\n").split(":", 2)[-1] == group for line in own):
                    return
        except OSError as exc:
            sandbox_failed("reading /proc/self/cgroup", exc)
        if time.monotonic() > deadline:
            sandbox_failed("waiting to be moved into its pids cgroup", "not moved within %.0f s" % _CGROUP_WAIT)
        time.sleep(0.0005)


def sandbox_outer(settings):
    """The part that must come before any fork: the cgroup and the limits."""
    try:
        group = _path(settings, "cgroup")
    except ValueError as exc:
        sandbox_failed("reading its cgroup", exc)
    if group:
        _wait_for_cgroup(group)
    try:
        import resource

        files = int(settings["nofile"])
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY:
            files = min(files, hard)  # a limit is only lowered
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    except (KeyError, ValueError, OSError, ImportError) as exc:
        sandbox_failed("setting the open-file limit", exc)


def _read_only_but_writable(libc, settings):
    """In its own mount namespace: binds each writable folder onto itself,
    makes every mount read-only and private (one mount_setattr for the whole
    tree), then the binds writable again."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    try:
        setattr_call = int(settings["mount_setattr"])
        writable = [bytes.fromhex(h) for h in settings.get("write", "").split(",") if h]
        shm = bytes.fromhex(settings.get("shm", ""))
    except (KeyError, ValueError) as exc:
        sandbox_failed("reading its writable folders", exc)

    def set_attr(path, flags, attr):
        done = libc.syscall(ctypes.c_long(setattr_call), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(path), ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        if done != 0:
            sandbox_failed("changing the mount at %r (mount_setattr)" % path, os.strerror(ctypes.get_errno()))

    for path in writable:
        if libc.mount(path, path, None, ctypes.c_ulong(_MS_BIND | _MS_REC), None) != 0:
            sandbox_failed("binding %r writable" % path, os.strerror(ctypes.get_errno()))
    if shm:
        # POSIX shared memory and semaphores (multiprocessing's locks): a
        # folder of its own, not the machine's.
        if libc.mount(shm, _SHM, None, ctypes.c_ulong(_MS_BIND), None) != 0:
            sandbox_failed("binding its own %r" % _SHM, os.strerror(ctypes.get_errno()))
        writable.append(_SHM)
    set_attr(b"/", _AT_RECURSIVE, MountAttr(_MOUNT_ATTR_RDONLY, 0, _MS_PRIVATE, 0))
    for path in writable:
        set_attr(path, 0, MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0))


_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


def _drop_capabilities(libc):
    """Gives up every capability the worker holds in its user namespace
    (it holds them all there, having made it): none to change mounts,
    files' owners or anything else with, nor to regain by running a
    program (an empty bounding set; root's programs get no more)."""
    import ctypes

    last = 63
    try:
        with open("/proc/sys/kernel/cap_last_cap") as cap_last:
            last = int(cap_last.read())
    except (OSError, ValueError):
        pass
    ulong = ctypes.c_ulong
    for cap in range(last + 1):
        if libc.prctl(_PR_CAPBSET_DROP, ulong(cap), ulong(0), ulong(0), ulong(0)) != 0:
            error = ctypes.get_errno()
            if error != 22:  # EINVAL: past the kernel's last capability
                sandbox_failed("dropping capability %d from the bounding set" % cap, os.strerror(error))
    libc.prctl(_PR_CAP_AMBIENT, ulong(_PR_CAP_AMBIENT_CLEAR_ALL), ulong(0), ulong(0), ulong(0))

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    none = (Data * 2)()
    if libc.capset(ctypes.byref(Header(_CAPABILITY_VERSION_3, 0)), none) != 0:
        sandbox_failed("dropping its capabilities (capset)", os.strerror(ctypes.get_errno()))


def enter_sandbox(settings):
    """In the worker, once in its namespaces: the rest, last the kernel's
    rules, which it cannot leave."""
    import ctypes

    libc = _linux_libc()
    if libc is None:
        sandbox_failed("entering its rules", "no C library through ctypes")
    _read_only_but_writable(libc, settings)
    try:
        scratch = _path(settings, "scratch")
        os.chdir(scratch)  # after the bind: the writable mount, not the one under it
    except OSError as exc:
        sandbox_failed("entering its scratch folder", exc)
    for name in ("TMPDIR", "HOME"):
        os.environ.setdefault(name, scratch)
    import sys

    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # a zygote's choice, made before
    _drop_capabilities(libc)
    ulong = ctypes.c_ulong
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        sandbox_failed("setting no_new_privs", os.strerror(ctypes.get_errno()))
    try:
        ruleset = int(settings["ruleset"])
        restrict = int(settings["restrict"])
    except (KeyError, ValueError) as exc:
        sandbox_failed("finding its landlock ruleset", exc)
    if libc.syscall(ctypes.c_long(restrict), ctypes.c_long(ruleset), ctypes.c_long(0)) != 0:
        sandbox_failed("entering its landlock ruleset", os.strerror(ctypes.get_errno()))
    os.close(ruleset)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    try:
        programs = [bytes.fromhex(h) for h in settings.get("filter", "").split(",") if h]
    except ValueError as exc:
        sandbox_failed("reading its seccomp filters", exc)
    if not programs:
        sandbox_failed("installing its seccomp filters", "the parent sent none")
    for program in programs:
        code = ctypes.create_string_buffer(program, len(program))
        fprog = Program(len(program) // 8, ctypes.cast(code, ctypes.c_void_p))
        if libc.prctl(_PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), ulong(0), ulong(0)) != 0:
            sandbox_failed("installing its seccomp filter", os.strerror(ctypes.get_errno()))
