# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""Containment: a child worker in a pid namespace of its own, behind a
stand-in that its parent sees, so that nothing it starts outlives it."""

import os
import signal
import sys

def _linux_libc():
    """The C library through ctypes on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _die_with_parent(libc):
    """Asks for SIGKILL when the parent dies (a fork does not inherit it)."""
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


_CLONE_NEWPID = 0x20000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000

_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""The signals the stand-in passes on to a contained worker."""

_pid_outside = None
"""A contained worker's pid as its parent knows it (the stand-in's)."""


def _contain(sandbox=None):
    """Moves the rest of this worker into a pid namespace of its own, so that
    nothing it starts outlives it: not a process that left its process
    group (os.setsid()), nor one whose parent is gone. When the init of a
    pid namespace dies, the kernel SIGKILLs everything in it.

    A process cannot enter a new pid namespace, only fork into it, so this
    one (the one the parent started, or the zygote forked) makes the
    namespace and forks two processes into it: a small init (pid 1), and the
    worker, which returns from here and goes on. This process stays outside
    as the worker's stand-in and never returns: it passes on the signals its
    parent sends, and once the worker has ended, kills the init, and with it
    the whole namespace, then ends as the worker did (its exit status, or
    the same signal). The init dies with the stand-in, the stand-in with its
    parent, and the parent's kills of the process group reach all three.

    Where the kernel makes no namespace (not Linux; no privilege for one and
    no user namespaces), this returns at once, and the worker runs here,
    uncontained. A sandboxed child (`sandbox`, its settings) always makes a
    user namespace too, and IPC and network ones (see sandbox.py), or ends.
    """
    global _pid_outside
    libc = _linux_libc()
    if sandbox is not None:
        if libc is None:
            sandbox_failed("making its namespaces", "no C library through ctypes")
        _unshare_sandbox_namespaces(libc, sandbox)
    elif libc is None or not _unshare_pid_namespace(libc):
        return
    outside = os.getpid()
    # The init reads end of file here when the stand-in is gone.
    alive_r, alive_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        init = os.fork()
    except OSError as exc:
        _say("could not start the pid namespace's init: %s" % exc)
        os._exit(1)
    if init == 0:
        os.close(alive_w)
        os.close(ready_r)
        _namespace_init(libc, outside, alive_r, ready_w)
    os.close(alive_r)
    os.close(ready_w)
    os.read(ready_r, 1)  # the init has claimed the worker's pid
    os.close(ready_r)
    try:
        worker = os.fork()
    except OSError as exc:
        _say("could not fork the worker into its pid namespace: %s" % exc)
        os.kill(init, signal.SIGKILL)
        os._exit(1)
    if worker == 0:
        os.close(alive_w)
        _die_with_parent(libc)
        _pid_outside = outside
        return
    _stand_in(worker, init)


def _unshare_pid_namespace(libc):
    """Has this process's children made in a new pid namespace; False if the
    kernel refuses. Without the privilege for one (CAP_SYS_ADMIN), a new
    user namespace gives it, with this user's ids mapped to themselves."""
    if libc.unshare(_CLONE_NEWPID) == 0:
        return True
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID) != 0:
        return False
    _map_own_ids(uid, gid)
    return True


def _unshare_sandbox_namespaces(libc, sandbox):
    """A sandboxed child's namespaces: a user namespace, in which it holds
    no capability over anything outside (also when it runs as root), a pid
    namespace for its children, an IPC one (no System V memory of other
    processes), a mount one (in which sandbox.py makes all but its writable
    folders read-only), and without network a network one. Ends the child
    if the kernel refuses."""
    flags = _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWNS
    if sandbox.get("network") != "1":
        flags |= _CLONE_NEWNET
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags) != 0:
        import ctypes

        error = ctypes.get_errno()
        sandbox_failed(
            "making its user, pid, IPC, mount and network namespaces (unshare)",
            "%s; user namespaces may be off (sysctl user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone, or an AppArmor restriction)" % os.strerror(error),
        )
    _map_own_ids(uid, gid, strict=True)


def _map_own_ids(uid, gid, strict=False):
    """Maps this user's ids (`uid` and `gid`, as they were before) to
    themselves in the user namespace just made."""
    for path, text in (
        ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
        ("/proc/self/setgroups", "deny"),  # the kernel's condition for a gid map
        ("/proc/self/gid_map", "%d %d 1" % (gid, gid)),
    ):
        try:
            with open(path, "w") as file:
                file.write(text)
        except OSError as exc:
            if strict:
                sandbox_failed("writing " + path, exc)
            _say("could not write %s: %s" % (path, exc))


def _namespace_init(libc, outside, alive, ready):
    """pid 1 of a contained worker's namespace, until the stand-in is gone.
    The kernel reaps the orphans it inherits (SIGCHLD ignored). Signals sent
    from inside the namespace cannot end an init that has no handler for
    them; SIGINT's handler is dropped for that. Never returns."""
    try:
        _die_with_parent(libc)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _claim_pid(outside)
        os.write(ready, b"r")
        os.close(ready)
        for fd in (0, 1, 2):
            os.close(fd)
        # End of file: the stand-in died, perhaps before the prctl above.
        while os.read(alive, 1):
            pass
    finally:
        os._exit(0)


def _claim_pid(pid):
    """Has the next process made in this namespace, the worker, get `pid`
    (its stand-in's): os.getpid() in the worker is then the pid its parent
    knows, and a kill of its own pid still reaches the worker. Where the
    kernel does not allow it, the worker is pid 2."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(pid - 1))
    except OSError:
        pass


def _stand_in(worker, init):
    """The rest of the process the parent started, once the worker runs in a
    namespace: passes signals on to it, and ends as it ended. Never returns."""

    def pass_on(signum, frame):
        os.kill(worker, signum)

    try:
        for signum in _PASSED_ON:
            signal.signal(signum, pass_on)
        # The worker's pipes stay open here until this process ends: end of
        # file or a broken pipe then tells the parent that all of it is
        # ending, with the worker's status.
        # Unreaped, the worker's pid cannot be another's while signals may
        # be passed on to it.
        os.waitid(os.P_PID, worker, os.WEXITED | os.WNOWAIT)
        for signum in _PASSED_ON:
            signal.signal(signum, signal.SIG_IGN)
        _, status = os.waitpid(worker, 0)
        os.kill(init, signal.SIGKILL)
        os.waitpid(init, 0)
        _end_as(status)
    except BaseException as exc:
        _say("the worker's stand-in failed: %s: %s" % (type(exc).__name__, exc))
    finally:
        os._exit(1)  # the init, and so the worker, die with this process


def _end_as(status):
    """Ends this process as wait status `status` says another ended."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            import resource

            # The worker's core, if it left one, is the one that tells.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except Exception:
            pass
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to end
    os._exit(os.WEXITSTATUS(status))
