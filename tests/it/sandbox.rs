//! The sandbox (`Sandbox`): each rule met by real attack code, asserting the
//! denial and that the runner serves on; a fork bomb as root; the scratch
//! folder and cgroup removed; every child of a pool sandboxed, replacements
//! and recycles too; the `Startup` error a kernel without a rule gives.

use crate::faults;
use crate::pool;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use async_py::{PyPool, PyRunner, PyRunnerBuilder, PyRunnerError, Sandbox, Value};
use faults::within;

fn sandboxed(sandbox: Sandbox) -> PyRunnerBuilder {
    faults::builder()
        .sandbox(sandbox)
        .timeout(Duration::from_secs(20))
}

fn runner() -> PyRunner {
    sandboxed(Sandbox::new())
        .build()
        .expect("a sandboxed child starts")
}

/// The kind of the Python exception `result` failed with.
fn python_error(result: Result<Value, PyRunnerError>) -> String {
    match result {
        Err(PyRunnerError::Python { kind, .. }) => kind,
        other => panic!("expected a Python error, got {other:?}"),
    }
}

/// The runner serves on, from the same child.
fn still_serves(runner: &PyRunner, pid: u32) {
    assert_eq!(runner.eval_sync("6 * 7").unwrap(), Value::from(42));
    assert_eq!(faults::child_pid(runner), pid, "the same child answers");
}

fn text(value: &str) -> Value {
    Value::from(value)
}

/// `attempt(code)`: runs `code` and gives the name of what it raised, or
/// "ok" and what it returned; the child catches it, so its kind is seen
/// without the traceback's noise.
const ATTEMPT: &str = r#"
def attempt(code):
    scope = {}
    try:
        exec("def _f():\n" + "".join("    " + line + "\n" for line in code.splitlines()), scope)
        return ["ok", repr(scope["_f"]())]
    except BaseException as exc:
        return [type(exc).__name__, str(exc)]
"#;

fn attempt(runner: &PyRunner, code: &str) -> (String, String) {
    let got = runner
        .call_function_sync("attempt", vec![text(code)])
        .expect("attempt answers");
    let pair = got.as_array().expect("a pair");
    (
        pair[0].as_str().unwrap().to_string(),
        pair[1].as_str().unwrap().to_string(),
    )
}

fn denied(runner: &PyRunner, code: &str, kinds: &[&str]) {
    let (kind, detail) = attempt(runner, code);
    assert!(
        kinds.contains(&kind.as_str()),
        "{code:?} should raise one of {kinds:?}, got {kind}: {detail}"
    );
}

fn allowed(runner: &PyRunner, code: &str) -> String {
    let (kind, detail) = attempt(runner, code);
    assert_eq!(kind, "ok", "{code:?} should work: {detail}");
    detail
}

#[test]
fn reads_only_the_interpreter_its_libraries_and_what_is_allowed() {
    within(60, || {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("input.txt"), "given").unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("secret.txt"), "not given").unwrap();
        let runner = sandboxed(Sandbox::new().allow_read(data.path()))
            .build()
            .unwrap();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        for attack in [
            "return open('/etc/passwd').read()",
            "return open('/etc/shadow').read()",
            "import os\nreturn os.listdir('/root')",
            "return open('/root/.bash_history').read()",
            "return open('/proc/1/environ', 'rb').read()",
            "return open('/proc/self/environ', 'rb').read()",
            "import os\nreturn os.listdir('/')",
            "import os\nreturn os.listdir('/home')",
        ] {
            denied(&runner, attack, &["PermissionError", "FileNotFoundError"]);
        }
        denied(
            &runner,
            &format!("return open({:?}).read()", other.path().join("secret.txt")),
            &["PermissionError"],
        );
        assert_eq!(
            allowed(
                &runner,
                &format!("return open({:?}).read()", data.path().join("input.txt"))
            ),
            "'given'"
        );
        // The standard library, and extension modules with their shared
        // libraries (libsqlite3, libssl, libffi) load.
        allowed(
            &runner,
            "import json, decimal, sqlite3, hashlib, ctypes, ssl, zoneinfo, asyncio\n\
             return sqlite3.connect(':memory:').execute('select 1').fetchone()",
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn writes_only_its_scratch_folder_which_goes_with_it() {
    within(60, || {
        let shared = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let runner = sandboxed(Sandbox::new().allow_write(shared.path()))
            .build()
            .unwrap();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        let scratch = allowed(&runner, "import os\nreturn os.getcwd()");
        let scratch = PathBuf::from(scratch.trim_matches('\''));
        assert!(scratch.is_dir(), "{scratch:?}");
        // Its working folder, TMPDIR and HOME, all one private folder.
        allowed(
            &runner,
            "import os, tempfile\n\
             assert os.environ['TMPDIR'] == os.environ['HOME'] == os.getcwd()\n\
             with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('x')\n\
             assert os.path.dirname(f.name) == os.getcwd()\n\
             open('here.txt', 'w').write('kept')\n\
             os.mkdir('sub'); os.rename('here.txt', 'sub/moved.txt')",
        );
        assert_eq!(
            std::fs::read_to_string(scratch.join("sub/moved.txt")).unwrap(),
            "kept"
        );
        allowed(
            &runner,
            &format!(
                "open({:?}, 'w').write('shared')",
                shared.path().join("out.txt")
            ),
        );
        assert_eq!(
            std::fs::read_to_string(shared.path().join("out.txt")).unwrap(),
            "shared"
        );
        let stdlib = runner.eval_sync("__import__('os').__file__").unwrap();
        for attack in [
            format!(
                "open({:?}, 'w').write('x')",
                outside.path().join("planted.txt")
            ),
            "open('/tmp/planted-by-sandbox.txt', 'w').write('x')".to_string(),
            format!("open({stdlib}, 'a').write('# planted')"),
            format!("import os\nos.truncate({stdlib}, 0)"),
            "import os\nos.remove('/etc/hostname')".to_string(),
            "import os\nos.symlink('/etc/passwd', '/tmp/link-by-sandbox')".to_string(),
            "import os\nos.mkfifo('/tmp/fifo-by-sandbox')".to_string(),
            "import os\nos.utime('/etc/passwd')".to_string(),
            "import os\nos.chmod('/etc/passwd', 0o666)".to_string(),
            "import os\nos.chown('/etc/passwd', 1, 1)".to_string(),
            "import os\nos.setxattr('/etc/passwd', 'user.planted', b'x')".to_string(),
            "import os\nos.link('/etc/passwd', 'hard-link')".to_string(),
        ] {
            denied(&runner, &attack, &["PermissionError", "OSError"]);
        }
        assert!(!outside.path().join("planted.txt").exists());
        assert!(!std::path::Path::new("/tmp/planted-by-sandbox.txt").exists());
        still_serves(&runner, pid);
        drop(runner);
        faults::eventually("the scratch folder is removed", || !scratch.exists());
    });
}

#[test]
fn has_no_network_of_any_kind() {
    within(60, || {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let folder = tempfile::tempdir().unwrap();
        let unix_path = folder.path().join("listener.sock");
        let unix = UnixListener::bind(&unix_path).unwrap();
        unix.set_nonblocking(true).unwrap();
        let runner = sandboxed(Sandbox::new().allow_write(folder.path()))
            .build()
            .unwrap();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        for attack in [
            format!(
                "import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)"
            ),
            "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()".into(),
            format!(
                "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.sendto(b'leak', ('127.0.0.1', {udp_port}))"
            ),
            "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_STREAM)".into(),
            format!(
                "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({:?})",
                unix_path
            ),
            "import socket\nsocket.socket(socket.AF_UNIX).connect('\\0abstract-name')".into(),
            "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)".into(),
            "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)".into(),
            "import socket\nreturn socket.getaddrinfo('localhost', 80)".into(),
        ] {
            denied(
                &runner,
                &attack,
                &["PermissionError", "OSError", "socket.gaierror", "gaierror"],
            );
        }
        // Nothing reached the listeners.
        assert!(tcp.accept().is_err(), "a TCP connection came through");
        let mut buf = [0u8; 16];
        assert!(udp.recv_from(&mut buf).is_err(), "a datagram came through");
        assert!(unix.accept().is_err(), "a Unix connection came through");
        // What needs no network still works: socketpair, asyncio.
        allowed(
            &runner,
            "import socket, asyncio\n\
             a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'\n\
             async def main():\n    await asyncio.sleep(0.01)\n    return 1\n\
             return asyncio.run(main())",
        );
        assert_eq!(
            python_error(runner.eval_sync("__import__('socket').socket()")),
            "PermissionError"
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn network_true_gives_the_network_back() {
    within(60, || {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let runner = sandboxed(Sandbox::new().network(true)).build().unwrap();
        runner
            .run_sync(&format!(
                "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'hi')"
            ))
            .unwrap();
        let (mut stream, _) = tcp.accept().unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
        // Its files are still fenced.
        assert_eq!(
            python_error(runner.eval_sync("open('/etc/passwd').read()")),
            "PermissionError"
        );
    });
}

#[test]
fn runs_no_program_outside_and_gains_no_privilege() {
    within(60, || {
        let runner = runner();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        for attack in [
            "import subprocess\nreturn subprocess.run(['/bin/cat', '/etc/passwd'], capture_output=True).stdout",
            "import subprocess\nreturn subprocess.run(['/bin/sh', '-c', 'cat /etc/passwd'], capture_output=True).stdout",
            "import os\nos.execv('/usr/bin/env', ['env'])",
        ] {
            denied(&runner, attack, &["PermissionError"]);
        }
        // Its own interpreter runs, under the same rules.
        let out = allowed(
            &runner,
            "import subprocess, sys\n\
             r = subprocess.run([sys.executable, '-c', \"open('/etc/passwd')\"], capture_output=True, text=True)\n\
             return r.returncode, r.stderr.strip().splitlines()[-1]",
        );
        assert!(out.contains("PermissionError"), "{out}");
        // no_new_privs is set, and root's powers over the machine are gone.
        assert_eq!(
            allowed(
                &runner,
                "import ctypes\nreturn ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)"
            ),
            "1"
        );
        for attack in [
            "import socket\nsocket.sethostname('sandboxed')",
            "import os\nos.setuid(1000)",
            "import os\nos.mknod('dev', 0o600 | __import__('stat').S_IFCHR, os.makedev(1, 3))",
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.mount(b'none', b'.', b'tmpfs', 0, None) != 0: raise OSError(ctypes.get_errno(), 'mount')",
        ] {
            denied(&runner, attack, &["PermissionError", "OSError"]);
        }
        still_serves(&runner, pid);
    });
}

#[test]
fn sees_a_cleared_environment() {
    within(60, || {
        // This process's own variables serve as the secrets: set_var would
        // race the other tests' threads under `cargo test`.
        let ours: Vec<(String, String)> = std::env::vars().collect();
        assert!(!ours.is_empty());
        let runner = sandboxed(Sandbox::new())
            .env("GIVEN", "yes")
            .build()
            .unwrap();
        let env = runner.eval_sync("dict(__import__('os').environ)").unwrap();
        let env = env.as_object().unwrap();
        let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["GIVEN", "HOME", "LC_CTYPE", "TMPDIR"], "{env:?}");
        // Nor any value of this process's under another name (the child's
        // own locale aside, which Python sets from nothing).
        for (key, value) in &ours {
            if value.len() > 3 && env.get("LC_CTYPE").is_none_or(|own| own != value) {
                assert!(
                    !env.values().any(|v| v == value.as_str()),
                    "{key}'s value reached it"
                );
            }
        }
        assert_eq!(env["GIVEN"], "yes");
        assert!(!env.keys().any(|k| k.starts_with("ASYNC_PY")), "{env:?}");
    });
}

/// Counts how many children it could fork, each waiting until told to end,
/// then ends them all.
const FORKS: &str = r#"
import os, time
def fork_bomb(tries):
    started, r, w = [], *os.pipe()
    try:
        for _ in range(tries):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.close(w)
                os.read(r, 1)
                os._exit(0)
            started.append(pid)
    finally:
        os.close(w)
        for pid in started:
            os.waitpid(pid, 0)
        os.close(r)
    return len(started)

def threads(tries):
    import threading
    stop, started = threading.Event(), []
    try:
        for _ in range(tries):
            t = threading.Thread(target=stop.wait)
            try:
                t.start()
            except RuntimeError:
                break
            started.append(t)
    finally:
        stop.set()
        for t in started:
            t.join()
    return len(started)

def spreading_bomb(seconds):
    # Every process forks again, and again, for `seconds`: a classic bomb.
    end = time.time() + seconds
    while time.time() < end:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
    os._exit(0)
"#;

#[test]
fn a_fork_bomb_stays_inside_its_bound_also_as_root() {
    within(90, || {
        // SAFETY: getuid(2) cannot fail.
        let root = unsafe { libc::getuid() } == 0;
        let runner = sandboxed(Sandbox::new().max_processes(8)).build().unwrap();
        runner.run_sync(FORKS).unwrap();
        let pid = faults::child_pid(&runner);
        let forked = runner
            .call_function_sync("fork_bomb", vec![Value::from(200)])
            .unwrap();
        assert_eq!(forked, Value::from(8), "as root: {root}");
        let threads = runner
            .call_function_sync("threads", vec![Value::from(200)])
            .unwrap();
        assert_eq!(threads, Value::from(8));
        still_serves(&runner, pid);
        // A bomb in which every process forks: the whole sandbox holds at
        // most 8 more, and the command ends at its limit.
        let bounded = sandboxed(Sandbox::new().max_processes(8))
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        bounded.run_sync(FORKS).unwrap();
        let group = cgroup_of(&bounded);
        let bomb = std::thread::spawn({
            let bounded = bounded.clone();
            move || bounded.call_function_sync("spreading_bomb", vec![Value::from(2)])
        });
        let mut most = 0;
        for _ in 0..100 {
            if let Ok(current) = std::fs::read_to_string(group.join("pids.current")) {
                most = most.max(current.trim().parse::<u32>().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ended = bomb.join().unwrap();
        assert!(
            matches!(
                ended,
                Err(PyRunnerError::Timeout { .. } | PyRunnerError::WorkerDied { .. }) | Ok(_)
            ),
            "{ended:?}"
        );
        // 8 of the user's, and the worker's own three (stand-in, init, worker).
        assert!(most <= 8 + 3, "the sandboxes held {most} processes");
        assert!(most >= 8, "the bomb never filled its bound: {most}");
        assert_eq!(bounded.eval_sync("1 + 1").unwrap(), Value::from(2));
    });
}

/// The folder of process `pid`'s group in the v1 pids hierarchy.
fn pids_cgroup_of(pid: &str) -> PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = own
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "pids")
                .then(|| path.to_string())
        })
        .expect("this machine has a v1 pids hierarchy");
    PathBuf::from("/sys/fs/cgroup/pids").join(path.trim_start_matches('/'))
}

/// The pids cgroup of a sandboxed runner's child, as the kernel names it
/// (the worker's pid is its stand-in's, which this process sees).
fn cgroup_of(runner: &PyRunner) -> PathBuf {
    let dir = pids_cgroup_of(&faults::child_pid(runner).to_string());
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("async_py-"),
        "{dir:?}"
    );
    dir
}

/// The pids cgroups this process made for its sandboxed children.
fn cgroups_of_this_process() -> Vec<PathBuf> {
    let prefix = format!("async_py-{}-", std::process::id());
    std::fs::read_dir(pids_cgroup_of("self"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

#[test]
fn its_cgroup_goes_with_it() {
    within(60, || {
        let runner = runner();
        let group = cgroup_of(&runner);
        assert!(group.join("pids.max").exists(), "{group:?}");
        assert!(cgroups_of_this_process().contains(&group));
        // A process that left the worker's session lives in the group too,
        // and ends with the child: the group is only removed once empty.
        runner
            .run_sync(
                "import subprocess, sys\n\
                 subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)",
            )
            .unwrap();
        let count = || {
            std::fs::read_to_string(group.join("pids.current"))
                .map(|n| n.trim().parse::<u32>().unwrap())
                .unwrap_or(0)
        };
        faults::eventually("the detached process is counted", || count() >= 4);
        drop(runner);
        faults::eventually("the cgroup is removed, all its processes gone", || {
            !group.exists()
        });
    });
}

#[test]
fn opens_at_most_max_open_files() {
    within(60, || {
        let runner = sandboxed(Sandbox::new().max_open_files(64))
            .build()
            .unwrap();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        let out = allowed(
            &runner,
            "import os, errno, resource\n\
             files = []\n\
             try:\n    while True:\n        files.append(os.open('/dev/null', os.O_RDONLY))\n\
             except OSError as exc:\n    assert exc.errno == errno.EMFILE, exc\n\
             highest = max(files)\n\
             for fd in files: os.close(fd)\n\
             try:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n    raised = True\n\
             except (ValueError, OSError):\n    raised = False\n\
             return highest, raised",
        );
        assert_eq!(
            out, "(63, False)",
            "the highest fd, and whether it could raise its limit"
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn cannot_signal_this_process_or_anything_outside() {
    within(60, || {
        let runner = runner();
        runner.run_sync(ATTEMPT).unwrap();
        let pid = faults::child_pid(&runner);
        let parent = std::process::id();
        denied(
            &runner,
            &format!("import os, signal\nos.kill({parent}, signal.SIGTERM)"),
            &["PermissionError", "ProcessLookupError"],
        );
        denied(
            &runner,
            &format!("import os, signal\nos.kill({parent}, 0)"),
            &["PermissionError", "ProcessLookupError"],
        );
        // The init of its pid namespace is outside its landlock domain.
        denied(
            &runner,
            "import os, signal\nos.kill(1, signal.SIGKILL)",
            &["PermissionError"],
        );
        // It sees no process outside: its parent is not its to name.
        assert_eq!(allowed(&runner, "import os\nreturn os.getppid()"), "0");
        denied(
            &runner,
            "import os, signal\nos.kill(-1, signal.SIGKILL)",
            &["PermissionError", "ProcessLookupError"],
        );
        assert!(faults::is_running(parent));
        still_serves(&runner, pid);
    });
}

#[test]
fn startup_code_runs_inside_and_replays_come_back_sandboxed() {
    within(60, || {
        match sandboxed(Sandbox::new())
            .startup("open('/etc/passwd').read()")
            .build()
        {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("PermissionError"), "{message}")
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
        let runner = sandboxed(Sandbox::new())
            .startup("import os\nFIRST_HOME = os.getcwd()")
            .build()
            .unwrap();
        runner.run_sync("defined = 'before the crash'").unwrap();
        let first = faults::child_pid(&runner);
        let first_home = runner.eval_sync("FIRST_HOME").unwrap();
        match runner.run_sync("import os; os._exit(3)") {
            Err(PyRunnerError::WorkerDied { .. }) => {}
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert_eq!(
            runner.eval_sync("defined").unwrap(),
            text("before the crash")
        );
        assert_ne!(faults::child_pid(&runner), first);
        let home = runner.eval_sync("__import__('os').getcwd()").unwrap();
        assert_eq!(runner.eval_sync("FIRST_HOME").unwrap(), home);
        assert_ne!(home, first_home, "a fresh child has a fresh scratch folder");
        assert_eq!(
            python_error(runner.eval_sync("open('/etc/passwd').read()")),
            "PermissionError"
        );
    });
}

fn sandboxed_pool(workers: usize) -> PyPool {
    pool::builder(workers)
        .sandbox(Sandbox::new().max_processes(4))
        .build()
        .expect("a sandboxed pool starts")
}

/// `probe()`: what a worker may do, as [pid, cwd, /etc/passwd readable,
/// socket made, processes it could fork].
const PROBE: &str = r#"
import os, socket, time
def probe():
    try:
        open('/etc/passwd').read(); read = True
    except PermissionError:
        read = False
    try:
        socket.socket(); net = True
    except PermissionError:
        net = False
    forked, r, w = [], *os.pipe()
    while len(forked) < 20:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.close(w); os.read(r, 1); os._exit(0)
        forked.append(pid)
    os.close(w)
    for pid in forked:
        os.waitpid(pid, 0)
    os.close(r)
    time.sleep(0.05)  # so that a map's calls spread over the workers
    return [os.getpid(), os.getcwd(), read, net, len(forked)]
"#;

fn probe_all(pool: &PyPool, calls: usize) -> Vec<Vec<Value>> {
    pool.run_sync(PROBE).unwrap();
    pool.map_sync("probe", vec![Vec::new(); calls])
        .into_iter()
        .map(|probe| probe.unwrap().as_array().unwrap().clone())
        .collect()
}

#[test]
fn every_worker_of_a_pool_is_sandboxed_forked_replaced_and_recycled() {
    within(120, || {
        let pool = sandboxed_pool(2);
        let seen = probe_all(&pool, 6);
        let mut homes = std::collections::BTreeSet::new();
        for probe in &seen {
            assert_eq!(probe[2], Value::from(false), "{probe:?}");
            assert_eq!(probe[3], Value::from(false), "{probe:?}");
            assert_eq!(probe[4], Value::from(4), "{probe:?}");
            homes.insert(probe[1].as_str().unwrap().to_string());
        }
        assert_eq!(
            homes.len(),
            2,
            "each worker has its own scratch folder: {homes:?}"
        );
        // A lost worker's replacement, and the pool after it.
        let _ = pool.run_sync("import os; os._exit(1)");
        for probe in probe_all(&pool, 6) {
            assert_eq!(probe[2], Value::from(false), "{probe:?}");
            assert_eq!(probe[4], Value::from(4), "{probe:?}");
        }
        drop(pool);
        for home in &homes {
            faults::eventually("a worker's scratch folder is removed", || {
                !std::path::Path::new(home).exists()
            });
        }
        // Recycled workers (one call each) come back sandboxed.
        let recycled = pool::builder(1)
            .sandbox(Sandbox::new().max_processes(4))
            .max_calls_per_worker(1)
            .build()
            .unwrap();
        recycled.run_sync(PROBE).unwrap();
        let mut pids = std::collections::BTreeSet::new();
        faults::eventually("a recycled worker answers", || {
            let probe = recycled.call_function_sync("probe", Vec::new()).unwrap();
            let probe = probe.as_array().unwrap();
            assert_eq!(probe[2], Value::from(false), "{probe:?}");
            assert_eq!(probe[4], Value::from(4), "{probe:?}");
            pids.insert(probe[0].as_u64().unwrap());
            pids.len() >= 2
        });
        assert!(recycled.stats().iter().map(|w| w.restarts).sum::<u64>() >= 1);
    });
}

#[test]
fn memory_limit_and_sandbox_together() {
    within(60, || {
        let runner = sandboxed(Sandbox::new())
            .memory_limit(512 << 20)
            .build()
            .unwrap();
        let pid = faults::child_pid(&runner);
        assert_eq!(
            python_error(runner.eval_sync("len(bytearray(3 * 1024**3))")),
            "MemoryError"
        );
        // Inside its user namespace it cannot raise a limit either.
        assert_eq!(
            python_error(
                runner
                    .run_sync("import resource\nresource.setrlimit(resource.RLIMIT_DATA, (-1, -1))")
                    .map(|_| Value::Null)
            ),
            "ValueError"
        );
        still_serves(&runner, pid);
    });
}

#[test]
fn a_rule_the_kernel_cannot_give_fails_build_and_runs_nothing() {
    within(60, || {
        let marker = tempfile::tempdir().unwrap();
        let ran = marker.path().join("ran");
        let built = sandboxed(Sandbox::new().require_landlock_abi(99))
            .startup(format!("open({:?}, 'w').close()", ran))
            .build();
        match built {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("landlock ABI 99"), "{message}");
                assert!(message.contains("this kernel has ABI"), "{message}");
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
        assert!(!ran.exists(), "no child ran unsandboxed");
        match pool::builder(1)
            .sandbox(Sandbox::new().require_landlock_abi(99))
            .build()
        {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("landlock ABI 99"), "{message}")
            }
            Err(other) => panic!("expected a Startup error, got {other:?}"),
            Ok(_) => panic!("expected a Startup error, the pool started"),
        }
        match sandboxed(Sandbox::new().allow_read("/no/such/folder")).build() {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("/no/such/folder"), "{message}")
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
    });
}

#[test]
fn in_process_backends_refuse_a_sandbox() {
    #[cfg(feature = "pyo3")]
    match PyRunner::builder().sandbox(Sandbox::new()).build() {
        Err(PyRunnerError::Unsupported(message)) => {
            assert!(message.contains("Subprocess"), "{message}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    #[cfg(feature = "rustpython")]
    match PyRunner::builder()
        .rustpython()
        .sandbox(Sandbox::new())
        .build()
    {
        Err(PyRunnerError::Unsupported(message)) => {
            assert!(message.contains("Subprocess"), "{message}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn every_installed_cpython_runs_sandboxed_from_its_venv() {
    within(180, || {
        for (minor, python) in crate::conformance::installed_cpythons() {
            let dir = tempfile::tempdir().unwrap();
            let venv = dir.path().join("venv");
            let site_packages = crate::conformance::make_venv(&python, &venv);
            std::fs::write(
                site_packages.join("venv_pkg.py"),
                "VALUE = 'from the venv'\n",
            )
            .unwrap();
            let runner = PyRunner::builder()
                .subprocess()
                .venv(&venv)
                .sandbox(Sandbox::new())
                .build()
                .unwrap_or_else(|err| panic!("CPython {minor}: {err}"));
            assert_eq!(
                runner
                    .eval_sync("'%d.%d' % __import__('sys').version_info[:2]")
                    .unwrap(),
                text(&minor)
            );
            assert_eq!(
                runner.eval_sync("__import__('venv_pkg').VALUE").unwrap(),
                text("from the venv"),
                "CPython {minor}"
            );
            runner
                .run_sync("import json, decimal, sqlite3, asyncio\nasyncio.run(asyncio.sleep(0))")
                .unwrap_or_else(|err| panic!("CPython {minor}: {err}"));
            assert_eq!(
                python_error(runner.eval_sync("open('/etc/passwd').read()")),
                "PermissionError",
                "CPython {minor}"
            );
            assert_eq!(
                python_error(runner.eval_sync("__import__('socket').socket()")),
                "PermissionError",
                "CPython {minor}"
            );
            // The venv's own files are read, not written.
            assert_eq!(
                python_error(runner.eval_sync(&format!(
                    "open({:?}, 'a').write('x')",
                    site_packages.join("venv_pkg.py")
                ))),
                "OSError",
                "CPython {minor}"
            );
        }
    });
}

#[test]
fn a_uv_venv_with_a_package_from_the_index_runs_sandboxed() {
    within(180, || {
        let dir = tempfile::tempdir().unwrap();
        let venv =
            crate::conformance::uv_venv_with_six(dir.path(), &crate::conformance::base_python());
        let pool = PyPool::builder()
            .workers(2)
            .venv(&venv)
            .sandbox(Sandbox::new())
            .build()
            .unwrap();
        pool.run_sync("import six").unwrap();
        assert_eq!(pool.eval_sync("six.__version__").unwrap(), text("1.16.0"));
        assert_eq!(
            python_error(pool.eval_sync("open('/etc/passwd').read()")),
            "PermissionError"
        );
    });
}

#[test]
fn a_timeout_capture_and_host_functions_work_inside() {
    within(60, || {
        let runner = faults::builder()
            .sandbox(Sandbox::new())
            .timeout(Duration::from_secs(1))
            .host_function("double", |call: async_py::HostCall| {
                Ok(Value::from(call.arg::<i64>(0)? * 2))
            })
            .build()
            .unwrap();
        let first = faults::child_pid(&runner);
        // Captured output takes a temporary file for fds 1 and 2: in TMPDIR.
        let captured = runner
            .exec("import os\nprint('printed')\nos.write(1, b'written\\n')")
            .capture_output()
            .wait()
            .unwrap();
        assert_eq!(captured.stdout, "printed\nwritten\n");
        assert_eq!(
            runner
                .eval_sync("__import__('async_py').host.double(21)")
                .unwrap(),
            Value::from(42)
        );
        match runner.run_sync("while True:\n    pass") {
            Err(PyRunnerError::Timeout(_)) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        assert_ne!(
            faults::child_pid(&runner),
            first,
            "the stuck child was replaced"
        );
        assert_eq!(
            python_error(runner.eval_sync("open('/etc/passwd').read()")),
            "PermissionError"
        );
    });
}

#[test]
fn a_relative_venv_and_a_relative_allowed_folder() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join(".venv");
        let site_packages =
            crate::conformance::make_venv(&crate::conformance::base_python(), &venv);
        std::fs::write(site_packages.join("found_here.py"), "OK = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/in.txt"), "given").unwrap();
        // Found as ./.venv of `current_dir`; the data folder named relative
        // to this process's working folder (not changed: other tests'
        // threads share it under `cargo test`).
        let cwd = std::env::current_dir().unwrap();
        let mut relative = PathBuf::new();
        for _ in cwd.components().skip(1) {
            relative.push("..");
        }
        relative.push(dir.path().join("data").strip_prefix("/").unwrap());
        assert!(relative.is_relative() && relative.exists(), "{relative:?}");
        let runner = PyRunner::builder()
            .subprocess()
            .current_dir(dir.path())
            .sandbox(Sandbox::new().allow_read(&relative).allow_write(&relative))
            .build()
            .unwrap();
        assert_eq!(
            runner.eval_sync("__import__('found_here').OK").unwrap(),
            Value::from(1)
        );
        let data = dir.path().join("data");
        assert_eq!(
            runner
                .eval_sync(&format!("open({:?}).read()", data.join("in.txt")))
                .unwrap(),
            text("given")
        );
        runner
            .run_sync(&format!(
                "open({:?}, 'w').write('out')",
                data.join("out.txt")
            ))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("out.txt")).unwrap(),
            "out"
        );
    });
}

#[test]
fn allow_write_may_not_reach_what_children_load_before_their_sandbox() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        crate::conformance::make_venv(&crate::conformance::base_python(), &venv);
        for writable in [venv.clone(), venv.join("lib"), dir.path().to_path_buf()] {
            match PyRunner::builder()
                .subprocess()
                .venv(&venv)
                .sandbox(Sandbox::new().allow_write(&writable))
                .build()
            {
                Err(PyRunnerError::Startup(message)) => {
                    assert!(message.contains("allow_write"), "{message}");
                    assert!(
                        message.contains("before they enter their sandbox"),
                        "{message}"
                    );
                }
                other => panic!("allow_write({writable:?}): expected Startup, got {other:?}"),
            }
        }
    });
}

#[test]
fn a_unix_datagram_pair_cannot_reach_a_daemon_and_network_true_is_ip_only() {
    within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let daemon = folder.path().join("daemon.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&daemon).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for sandbox in [Sandbox::new(), Sandbox::new().network(true)] {
            let runner = sandboxed(sandbox).build().unwrap();
            runner.run_sync(ATTEMPT).unwrap();
            let pid = faults::child_pid(&runner);
            denied(
                &runner,
                &format!(
                    "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                     a.sendto(b'leak', {daemon:?})"
                ),
                &["PermissionError"],
            );
            denied(
                &runner,
                "import socket\nsocket.socketpair(socket.AF_INET)",
                &["PermissionError", "OSError"],
            );
            denied(
                &runner,
                "import socket\nsocket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET)",
                &["PermissionError"],
            );
            // Stream pairs stay: asyncio and multiprocessing.Pipe use them.
            allowed(
                &runner,
                "import socket, multiprocessing\na, b = socket.socketpair()\n\
                 r, w = multiprocessing.Pipe()\nw.send(1)\nreturn r.recv()",
            );
            still_serves(&runner, pid);
        }
        let mut buf = [0u8; 16];
        assert!(
            listener.recv(&mut buf).is_err(),
            "a datagram reached the daemon"
        );
    });
}

#[test]
fn allow_write_may_not_reach_other_childrens_folders_or_code_yet_to_be() {
    within(60, || {
        let temp = std::env::temp_dir();
        match sandboxed(Sandbox::new().allow_write(&temp)).build() {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("other sandboxed children"), "{message}")
            }
            other => panic!("expected Startup, got {other:?}"),
        }
        // An import folder that does not exist yet: a child could make it,
        // and the next child import from it before its sandbox.
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("later");
        match sandboxed(Sandbox::new().allow_write(dir.path()))
            .env("PYTHONPATH", &later)
            .build()
        {
            Err(PyRunnerError::Startup(message)) => {
                assert!(
                    message.contains("before they enter their sandbox"),
                    "{message}"
                )
            }
            other => panic!("expected Startup, got {other:?}"),
        }
    });
}

#[test]
fn what_a_process_now_gone_left_behind_is_swept_at_the_next_build() {
    within(60, || {
        // A process that ended with its runner alive leaves its child's
        // cgroup and folder: made here as it would have, for a pid that is
        // no process's (past the kernel's largest).
        let gone = 4_194_399u32;
        let name = format!("async_py-{gone}-0123456789abcdef");
        let folder = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(folder.join("scratch/sub")).unwrap();
        std::fs::write(folder.join("scratch/sub/file"), "left").unwrap();
        let group = pids_cgroup_of("self").join(&name);
        std::fs::create_dir(&group).unwrap();
        // A live process's are left alone.
        let live = std::env::temp_dir().join(format!("async_py-1-{}", "ab".repeat(8)));
        std::fs::create_dir_all(&live).unwrap();
        let runner = runner();
        runner.eval_sync("1").unwrap();
        assert!(!folder.exists(), "the folder was swept");
        assert!(!group.exists(), "the cgroup was swept");
        assert!(live.exists(), "pid 1's folder stays");
        std::fs::remove_dir(&live).unwrap();
    });
}
