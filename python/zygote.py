# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The zygote: forks a pool's workers on request (PROTOCOL.md, "The zygote")."""

import os
import select
import signal
import sys
from array import array

def _zygote_main():
    """A zygote: forks workers on request, so that a pool's workers start
    without paying for a Python start each (see PROTOCOL.md, "The zygote").

    Its stdin is a Unix stream socket to the parent (the messages are
    protocol.py's ZYGOTE_*). It sends ZYGOTE_READY once ready. A request
    ZYGOTE_FORK carries, as passed fds, the new worker's stdin, stdout and
    stderr, and its reply ring if it has one; the answer is ZYGOTE_FORKED
    and the worker's pid (0: no fork). When a worker it forked exits, it
    sends ZYGOTE_ENDED, the pid and the raw wait status, but leaves the
    worker a zombie until the request ZYGOTE_REAP and the pid (answered
    ZYGOTE_REAPED and the pid once reaped): until then the worker's pid and
    process group cannot be reused, so the parent's signals to them reach
    no other process. It exits at end of file.
    """
    # Before any import: what the zygote imports, every fork inherits, and
    # a file in the working folder must not stand in for a module.
    _forget_own_folder()
    import socket

    _exit_with_parent(0)
    control = socket.socket(fileno=0)
    _msgpack_codec()  # its import, if it has one, is then done for every worker
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    running, ended = set(), set()
    control.sendall(ZYGOTE_READY)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 512)
                for pid in sorted(running):
                    status = _ended_status(pid)
                    if status is not None:
                        running.discard(pid)
                        ended.add(pid)
                        control.sendall(ZYGOTE_ENDED + ZYGOTE_PID_STATUS.pack(pid, status))
                continue
            data, ancdata, _, _ = control.recvmsg(1, socket.CMSG_SPACE(5 * 4))
            if not data:
                return 0
            fds = array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if data == ZYGOTE_REAP:
                (pid,) = ZYGOTE_PID.unpack(_receive_exactly(control, ZYGOTE_PID.size))
                if pid in ended:
                    ended.discard(pid)
                    os.waitpid(pid, 0)
                control.sendall(ZYGOTE_REAPED + ZYGOTE_PID.pack(pid))
                continue
            forked = None  # the worker's pid here, 0 in the worker
            sandbox = None
            if data == ZYGOTE_FORK_SANDBOXED:
                (size,) = ZYGOTE_PID.unpack(_receive_exactly(control, ZYGOTE_PID.size))
                sandbox = parse_sandbox(_receive_exactly(control, size).decode("utf-8", "surrogateescape"))
                if len(fds) >= 4:
                    sandbox["ruleset"] = str(fds[3])
            stdio, ring = list(fds[:3]), fds[3:]
            if sandbox is not None:
                ring = ring[1:]
            if data in (ZYGOTE_FORK, ZYGOTE_FORK_SANDBOXED) and len(stdio) == 3 and len(ring) <= 1 and (sandbox is None or len(fds) >= 4):
                try:
                    forked = os.fork()
                except OSError as exc:  # no room for a process: the parent starts one
                    _say("the zygote could not fork: %s" % exc)
            if forked == 0:
                _forked_worker(stdio, ring[0] if ring else None, sandbox, control, (wake_r, wake_w))
            pid = forked or 0
            if pid > 0:
                running.add(pid)
                try:
                    # Here too, so the group exists once the parent hears the pid.
                    os.setpgid(pid, pid)
                except OSError:
                    pass
            for fd in fds:
                os.close(fd)
            control.sendall(ZYGOTE_FORKED + ZYGOTE_PID.pack(pid))


def _ended_status(pid):
    """The raw wait status of child `pid` if it has ended, else None; an
    ended child is left a zombie (WNOWAIT)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    if info.si_code == os.CLD_DUMPED:
        return info.si_status | 0x80
    return info.si_status  # killed by that signal


def _receive_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the parent's socket ended inside a request")
        data += chunk
    return data


def _forked_worker(fds, ring_fd, sandbox, control, wake):
    """In a child the zygote forked: takes the passed fds as stdin, stdout
    and stderr (and the reply ring), leads a process group of its own, and
    serves as a started pool worker does, in its sandbox if it has one.
    Never returns: SystemExit ends the interpreter as it ends a started
    worker (atexit handlers, threads joined)."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)
        control.detach()  # fd 0, about to be the worker's stdin
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds + list(wake):
            os.close(fd)
        ring_path = "" if ring_fd is None else "/proc/self/fd/%d" % ring_fd
        del sys.argv[1:]  # as a started worker's, once its arguments are taken
        _serve(True, ring_path, ring_fd, sandbox)
    except SystemExit:
        raise
    except BaseException as exc:
        _say("the forked worker failed: %s: %s" % (type(exc).__name__, exc))
        os._exit(1)
    os._exit(0)  # never back into the zygote's loop
