//! Attacks on the sandbox (`Sandbox`) from inside a sandboxed child: each
//! test asserts the DENIAL (it passes while the sandbox holds) and that the
//! runner serves on.
//!
//! Five of them found holes when first written, each closed since:
//! inherited fds, the session keyring, Unix sockets with network(true),
//! multiprocessing's /dev/shm, and nested user namespaces.

use crate::faults;
use crate::pool;

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use async_py::{PyRunner, PyRunnerBuilder, Sandbox, Value};
use faults::within;

fn sandboxed(sandbox: Sandbox) -> PyRunnerBuilder {
    faults::builder()
        .sandbox(sandbox)
        .timeout(Duration::from_secs(20))
}

/// As in sandbox.rs: `attempt(code)` gives [kind, detail].
const ATTEMPT: &str = r#"
import ctypes as _ctypes
_libc = _ctypes.CDLL(None, use_errno=True)
def sc(*a):
    r = _libc.syscall(*[_ctypes.c_long(x) if isinstance(x, int) else x for x in a])
    if r < 0:
        e = _ctypes.get_errno()
        raise OSError(e, __import__('os').strerror(e))
    return r
def attempt(code):
    scope = {'sc': sc, 'ctypes': _ctypes}
    try:
        exec("def _f():\n" + "".join("    " + line + "\n" for line in code.splitlines()), scope)
        return ["ok", repr(scope["_f"]())]
    except BaseException as exc:
        return [type(exc).__name__, str(exc)]
"#;

fn attempt_on(call: impl Fn(Vec<Value>) -> Value, code: &str) -> (String, String) {
    let got = call(vec![Value::from(code)]);
    let pair = got.as_array().expect("a pair");
    (
        pair[0].as_str().unwrap().to_string(),
        pair[1].as_str().unwrap().to_string(),
    )
}

fn attempt(runner: &PyRunner, code: &str) -> (String, String) {
    attempt_on(
        |args| {
            runner
                .call_function_sync("attempt", args)
                .expect("attempt answers")
        },
        code,
    )
}

fn denied(runner: &PyRunner, code: &str) {
    let (kind, detail) = attempt(runner, code);
    assert_ne!(kind, "ok", "{code:?} should be refused, gave {detail}");
}

fn allowed(runner: &PyRunner, code: &str) -> String {
    let (kind, detail) = attempt(runner, code);
    assert_eq!(kind, "ok", "{code:?} should work: {detail}");
    detail
}

fn ready(sandbox: Sandbox) -> (PyRunner, u32) {
    let runner = sandboxed(sandbox)
        .build()
        .expect("a sandboxed child starts");
    runner.run_sync(ATTEMPT).unwrap();
    let pid = faults::child_pid(&runner);
    (runner, pid)
}

fn still_serves(runner: &PyRunner, pid: u32) {
    assert_eq!(runner.eval_sync("6 * 7").unwrap(), Value::from(42));
    assert_eq!(faults::child_pid(runner), pid, "the same child answers");
}

/// Clears FD_CLOEXEC, as on an fd the host inherited from its own parent
/// (a systemd socket, a jobserver pipe, a log file).
fn inheritable(fd: i32) {
    // SAFETY: fcntl on an fd this process holds.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
}

#[test]
fn inherited_host_fds_do_not_reach_the_child() {
    within(60, || {
        let outside = tempfile::tempdir().unwrap();
        let log = outside.path().join("host.log");
        std::fs::write(&log, "host secret\n").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&log)
            .unwrap();
        inheritable(file.as_raw_fd());
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = tcp.accept().unwrap();
        accepted
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        inheritable(stream.as_raw_fd());
        let (runner, pid) = ready(Sandbox::new());
        // Every fd it holds that is not its own protocol's: read and write it.
        let found = attempt(
            &runner,
            "import os, stat\n\
             got = []\n\
             for fd in range(3, 1024):\n\
             \x20   try: st = os.fstat(fd)\n\
             \x20   except OSError: continue\n\
             \x20   if stat.S_ISREG(st.st_mode) and st.st_size < 100:\n\
             \x20       got.append((fd, os.pread(fd, 100, 0)))\n\
             \x20       os.write(fd, b'planted by the sandbox\\n')\n\
             \x20   if stat.S_ISSOCK(st.st_mode):\n\
             \x20       os.write(fd, b'leaked over an inherited socket')\n\
             \x20       got.append((fd, 'socket'))\n\
             return got",
        );
        drop((file, stream));
        let mut over_tcp = String::new();
        let _ = accepted.read_to_string(&mut over_tcp);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text == "host secret\n" && over_tcp.is_empty(),
            "through inherited fds: the file now {text:?}, over TCP {over_tcp:?}; found {found:?}"
        );
        still_serves(&runner, pid);
    });
}

const KEY_SPEC_SESSION_KEYRING: i32 = -3;

#[test]
fn the_host_session_keyring_is_not_readable() {
    within(60, || {
        // SAFETY: keyctl/add_key on this test's own process with valid,
        // NUL-terminated strings.
        unsafe {
            assert!(libc::syscall(libc::SYS_keyctl, 1 /* JOIN_SESSION_KEYRING */, 0) >= 0);
            let secret = b"hunter2";
            let key = libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"async_py_attack".as_ptr(),
                secret.as_ptr(),
                secret.len(),
                KEY_SPEC_SESSION_KEYRING,
            );
            assert!(key > 0, "{}", std::io::Error::last_os_error());
        }
        let (runner, pid) = ready(Sandbox::new());
        let (kind, detail) = attempt(
            &runner,
            "key = sc(250, 10, -3, ctypes.c_char_p(b'user'), ctypes.c_char_p(b'async_py_attack'), 0)\n\
             buf = ctypes.create_string_buffer(64)\n\
             n = sc(250, 11, key, buf, 64)\n\
             return buf.raw[:n]",
        );
        assert_ne!(kind, "ok", "the host's secret key was read: {detail}");
        still_serves(&runner, pid);
    });
}

#[test]
fn network_true_still_fences_unix_sockets_in_the_filesystem() {
    within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("daemon.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (runner, pid) = ready(Sandbox::new().network(true));
        let (kind, detail) = attempt(
            &runner,
            &format!(
                "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path:?})\n\
                 s.sendall(b'GET /containers/json')"
            ),
        );
        let reached = listener.accept().is_ok();
        assert!(
            kind != "ok" && !reached,
            "a Unix socket outside the rules connected ({kind}: {detail}); as root that may be \
             docker.sock or the system bus"
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn no_nested_user_namespace() {
    within(60, || {
        let (runner, pid) = ready(Sandbox::new());
        // In a fresh process, so that the worker is not moved.
        let (kind, detail) = attempt(
            &runner,
            "import os\npid = os.fork()\n\
             if pid == 0:\n    os._exit(0 if _libc_unshare() == 0 else 1)\n\
             return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])"
                .replace("_libc_unshare()", "ctypes.CDLL(None).unshare(0x10000000)")
                .as_str(),
        );
        assert_eq!(kind, "ok", "{detail}");
        assert_ne!(
            detail, "0",
            "it made a user namespace (and every capability in it) again"
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn kernel_interfaces_and_devices_are_refused() {
    within(90, || {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "v").unwrap();
        let (runner, pid) = ready(Sandbox::new());
        let v = format!("{victim:?}");
        for attack in [
            // the read-only mounts made writable again, then metadata
            "class A(ctypes.Structure): _fields_ = [(n, ctypes.c_uint64) for n in ('s', 'c', 'p', 'u')]\n\
             a = A(0, 1, 0, 0)\nreturn sc(442, -100, ctypes.c_char_p(b'/'), 0x8000, ctypes.byref(a), ctypes.sizeof(a))".to_string(),
            "sc(272, 0x00020000)\n\
             class A(ctypes.Structure): _fields_ = [(n, ctypes.c_uint64) for n in ('s', 'c', 'p', 'u')]\n\
             a = A(0, 1, 0, 0)\nreturn sc(442, -100, ctypes.c_char_p(b'/tmp'), 0x8000, ctypes.byref(a), ctypes.sizeof(a))".to_string(),
            format!("import os\nos.chmod({v}, 0o777)"),
            format!("import os\nos.utime({v}, (0, 0))"),
            format!("import os\nos.setxattr({v}, 'user.x', b'1')"),
            format!("import os\nos.truncate({v}, 0)"),
            format!("import os\nos.rename({v}, 'stolen')"),
            "return sc(165, ctypes.c_char_p(b'none'), ctypes.c_char_p(b'/tmp'), ctypes.c_char_p(b'tmpfs'), 0, 0)".into(), // mount
            "return sc(166, ctypes.c_char_p(b'/usr'), 2)".into(), // umount2
            "import os\nos.mkdir('new_root')\nreturn sc(155, ctypes.c_char_p(b'.'), ctypes.c_char_p(b'new_root'))".into(),
            "return open('/proc/self/root/etc/passwd').read()".into(),
            "return open('/proc/1/root/etc/passwd').read()".into(),
            "import os\nreturn os.readlink('/proc/1/cwd')".into(),
            "return open('/proc/self/status').read()".into(),
            "return sc(304, -100, ctypes.create_string_buffer(b'\\x08\\0\\0\\0\\x01\\0\\0\\0' + b'\\2' * 8), 0)".into(),
            "return sc(321, 0, 0, 0)".into(),           // bpf
            "return sc(323, 0)".into(),                  // userfaultfd
            "return sc(164, ctypes.byref(ctypes.c_long(0)), 0)".into(), // settimeofday
            "return sc(163, ctypes.c_char_p(b'acct'))".into(),
            "return sc(168, ctypes.c_char_p(b'/x'))".into(), // swapoff
            "return sc(171, ctypes.c_char_p(b'x'), 1)".into(), // setdomainname
            "import socket\nsocket.sethostname('x')".into(),
            "return sc(313, 0, ctypes.c_char_p(b''), 0)".into(), // finit_module
            "return sc(101, 16, 1, 0, 0)".into(),        // ptrace attach to its init
            "return sc(438, sc(434, 1, 0), 0, 0)".into(), // pidfd_getfd of its init
            "return sc(424, sc(434, 1, 0), 9, 0, 0)".into(), // pidfd_send_signal to its init
            "import os\nos.kill(1, 9)".into(),
            // perf_event_open: system-wide, all processes on cpu 0
            "attr = ctypes.create_string_buffer(128)\nattr[4] = 128\nreturn sc(298, attr, -1, 0, -1, 0)".into(),
            "import fcntl\nfcntl.ioctl(1, 0x5412, b'x')".into(), // TIOCSTI
            "return open('/dev/tty', 'w')".into(),
            "return open('/dev/kmsg', 'w')".into(),
            "return open('/dev/mem', 'rb')".into(),
            "return open('/proc/sysrq-trigger', 'w')".into(),
            "return open('/proc/sys/kernel/hostname', 'w')".into(),
            "return open('/sys/fs/cgroup/pids/cgroup.procs', 'w').write('0')".into(),
            "import os\nos.mknod('dev', 0o600 | 0o020000, os.makedev(1, 1))".into(),
            "import socket\nsocket.socketpair(socket.AF_INET)".into(),
            "return sc(0x40000000 + 41, 2, 1, 0)".into(), // x32 socket
            "import os\nreturn os.listdir('/proc')".into(),
            "import os\nreturn os.listdir('/tmp')".into(),
        ] {
            denied(&runner, &attack);
        }
        // Its /dev/shm is a folder of its own: what it puts there never
        // reaches the machine's.
        let name = format!("async_py-attack-{}", std::process::id());
        let planted = allowed(
            &runner,
            &format!("return open('/dev/shm/{name}', 'w').write('x')"),
        );
        assert_eq!(planted, "1");
        assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "v");
        assert!(xattr_absent(&victim));
        let _ = meta;
        still_serves(&runner, pid);
    });
}

fn xattr_absent(path: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 8];
    // SAFETY: valid path and buffer.
    unsafe { libc::getxattr(c.as_ptr(), c"user.x".as_ptr(), buf.as_mut_ptr().cast(), 8) < 0 }
}

#[test]
fn a_child_cannot_lower_the_hosts_priorities() {
    within(60, || {
        // SAFETY: plain getters on this process.
        let (nice, ioprio) = unsafe {
            (
                libc::getpriority(libc::PRIO_PROCESS, 0),
                libc::syscall(libc::SYS_ioprio_get, 1, 0),
            )
        };
        let (runner, pid) = ready(Sandbox::new());
        // Every process of its user (root, mapped to itself): reniced,
        // and to the idle IO class.
        let _ = attempt(&runner, "import os\nos.setpriority(os.PRIO_USER, 0, 19)");
        let _ = attempt(&runner, "return sc(251, 3, 0, 3 << 13)");
        let _ = attempt(&runner, "import os\nos.setpriority(os.PRIO_PGRP, 0, 19)");
        let after = unsafe {
            (
                libc::getpriority(libc::PRIO_PROCESS, 0),
                libc::syscall(libc::SYS_ioprio_get, 1, 0),
            )
        };
        assert_eq!(after, (nice, ioprio), "the host's own priorities changed");
        still_serves(&runner, pid);
    });
}

#[test]
fn reboot_ends_only_its_own_sandbox() {
    within(60, || {
        let (runner, _) = ready(Sandbox::new());
        let _ = runner.run_sync(
            "import ctypes\nctypes.CDLL(None).syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)",
        );
        assert!(faults::is_running(std::process::id()));
        assert_eq!(runner.eval_sync("6 * 7").unwrap(), Value::from(42));
    });
}

#[test]
fn the_parent_does_not_follow_what_the_child_planted_in_its_scratch() {
    within(60, || {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), "keep").unwrap();
        let (runner, _) = ready(Sandbox::new());
        let scratch = allowed(
            &runner,
            &format!(
                "import os\nos.symlink({:?}, 'link')\nos.symlink('/etc', 'etc')\n\
                 os.makedirs('locked/inner'); open('locked/inner/f', 'w').close()\n\
                 os.chmod('locked/inner', 0); os.chmod('locked', 0)\n\
                 with open('sparse', 'wb') as f: f.truncate(1 << 40)\n\
                 return os.getcwd()",
                outside.path()
            ),
        );
        let scratch = std::path::PathBuf::from(scratch.trim_matches('\''));
        drop(runner);
        faults::eventually("the scratch folder is removed", || !scratch.exists());
        assert!(outside.path().join("keep.txt").exists());
        assert!(std::path::Path::new("/etc/hostname").exists());
    });
}

/// multiprocessing's locks and queues (POSIX semaphores in /dev/shm).
#[test]
fn multiprocessing_works() {
    within(120, || {
        let (runner, pid) = ready(Sandbox::new().max_processes(16));
        for code in [
            "import multiprocessing as mp\np = mp.get_context('spawn').Process(target=abs, args=(1,)); p.start(); p.join(10); return p.exitcode",
            "import multiprocessing as mp\nctx = mp.get_context('fork')\nwith ctx.Pool(2) as p: return p.map(abs, [-1, -2])",
            "import multiprocessing as mp\nq = mp.get_context('fork').Queue(); q.put(1); return q.get(timeout=5)",
            "import concurrent.futures, multiprocessing as mp\nwith concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context('fork')) as e: return list(e.map(abs, [-1]))",
        ] {
            let (kind, detail) = attempt(&runner, code);
            assert_eq!(kind, "ok", "{code:?}: {detail}");
        }
        still_serves(&runner, pid);
    });
}

/// Ordinary Python, sandboxed.
#[test]
fn ordinary_python_works() {
    within(120, || {
        let (runner, pid) = ready(Sandbox::new().max_processes(16));
        for code in [
            "import json, decimal, sqlite3, hashlib, zoneinfo, uuid, platform, locale\n\
             c = sqlite3.connect('db.sqlite'); c.execute('create table t(x)'); c.commit()\n\
             return json.dumps([str(decimal.Decimal(1) / 7), str(uuid.uuid4())[:1], platform.python_version()])",
            "import ssl\nreturn ssl.create_default_context().verify_mode",
            "import asyncio\nasync def m():\n    await asyncio.sleep(0.01)\n    return 1\nreturn asyncio.run(m())",
            "import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n\
             [t.start() for t in ts]; [t.join() for t in ts]\nreturn sorted(out)",
            "import concurrent.futures\nwith concurrent.futures.ThreadPoolExecutor(4) as e: return list(e.map(abs, [-1, -2]))",
            "import subprocess, sys\nreturn subprocess.run([sys.executable, '-c', 'print(6*7)'], capture_output=True, text=True).stdout",
            "import tempfile, shutil\nd = tempfile.mkdtemp(); shutil.rmtree(d)\nreturn shutil.disk_usage('.').free > 0",
            "import os\nreturn os.cpu_count()",
        ] {
            allowed(&runner, code);
        }
        still_serves(&runner, pid);
    });
}

#[test]
fn pool_workers_forked_by_the_zygote_are_as_fenced() {
    within(120, || {
        let outside = tempfile::tempdir().unwrap();
        let log = outside.path().join("host.log");
        std::fs::write(&log, "host\n").unwrap();
        let pool = pool::builder(1)
            .sandbox(Sandbox::new().max_processes(4))
            .build()
            .expect("a sandboxed pool starts");
        pool.run_sync(ATTEMPT).unwrap();
        let call = |code: &str| {
            attempt_on(
                |args| {
                    pool.call_function_sync("attempt", args)
                        .expect("attempt answers")
                },
                code,
            )
        };
        let env = call("import os\nreturn dict(os.environ)");
        assert_eq!(env.0, "ok");
        // Nothing of this process's environment (set_var would race the
        // other tests' threads under `cargo test`: its own variables serve).
        for (key, _) in std::env::vars() {
            if !["HOME", "TMPDIR", "LC_CTYPE"].contains(&key.as_str()) {
                assert!(
                    !env.1.contains(&format!("'{key}'")),
                    "{key} reached the worker: {env:?}"
                );
            }
        }
        let fds = call(
            "import os\nout = {}\nfor fd in range(1024):\n\
             \x20   try: out[fd] = os.readlink('/proc/self/fd/%d' % fd)\n\
             \x20   except OSError: pass\nreturn out",
        );
        println!("pool worker fds: {fds:?}");
        assert!(
            !fds.1.contains("socket:"),
            "a socket reaches the worker: {fds:?}"
        );
        for attack in [
            "return open('/etc/passwd').read()",
            "import socket\nsocket.socket()",
            "import os\nos.kill(1, 9)",
            "import os\nos.chmod('/etc/passwd', 0o777)",
            "return open('/proc/self/environ', 'rb').read()",
        ] {
            let (kind, detail) = call(attack);
            assert_ne!(kind, "ok", "{attack:?} gave {detail}");
        }
        assert_eq!(pool.eval_sync("6 * 7").unwrap(), Value::from(42));
    });
}
