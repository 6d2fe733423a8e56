//! A child started through a launcher (`PyRunnerBuilder::launcher`): a
//! command such as `ssh -T host` that gives a Python elsewhere, with only
//! stdin and stdout between.
//!
//! The command line carries a short loader and nothing else (ssh joins its
//! arguments into one shell string, and a command line is no place for
//! the worker's 200 KiB); the loader reads from stdin, with `os.read` so
//! that nothing meant for the worker is buffered away, a preamble of
//! environment settings and the worker's source, then runs the worker as
//! the bootstrap would. The preamble is two length-prefixed blocks (4-byte
//! big-endian lengths): the environment (`c` or `k`: clear it first or
//! keep it; then `\0key\0value` per variable) and the source.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::child::LaunchSpec;

/// Set in a launched child's environment (`ENV_LAUNCHED` of
/// `python/protocol.py`) to its heartbeat interval in seconds: as no signal
/// of this process reaches it, it enforces its requests' limits itself,
/// beats when its link is quiet, and ends its own process group when its
/// stdin closes, whatever it is running.
const LAUNCHED_ENV: &str = "ASYNC_PY_LAUNCHED";

/// The `-c` code of a launched child.
const LOADER: &str = r#"import os, sys
def take(n):
    got = b""
    while len(got) < n:
        more = os.read(0, n - len(got))
        if not more:
            os._exit(1)
        got += more
    return got
def block():
    return take(int.from_bytes(take(4), "big"))
env = block().split(b"\0")
if env[0] == b"c":
    os.environ.clear()
for key, value in zip(env[1::2], env[2::2]):
    os.environb[key] = value
source = block()
__file__ = "async_py/worker.py"
del take, block, env
if "linecache" in sys.modules:
    sys.modules["linecache"].cache.pop("<string>", None)
exec(compile(source, __file__, "exec"))
"#;

/// `prefix... python -u -c LOADER last`, the rest of the line quoted for
/// the far side's shell when the prefix runs ssh.
pub(crate) fn command(prefix: &[OsString], python: &Path, last: &OsStr) -> Command {
    let mut command = Command::new(&prefix[0]);
    command.args(&prefix[1..]);
    let through_shell = joins_into_a_shell_line(prefix);
    let far: [&OsStr; 5] = [
        python.as_os_str(),
        OsStr::new("-u"),
        OsStr::new("-c"),
        OsStr::new(LOADER),
        last,
    ];
    for arg in far {
        if through_shell {
            command.arg(quoted(arg));
        } else {
            command.arg(arg);
        }
    }
    // Its own group, as a local child's: stopping it ends what it started.
    command.process_group(0);
    command
}

/// Whether `prefix` runs ssh, which joins the far side's arguments into one
/// line for the far shell: its program is `ssh` or `autossh`, or one of its
/// words is `ssh` (`sshpass -e ssh host`, `env ... ssh host`).
fn joins_into_a_shell_line(prefix: &[OsString]) -> bool {
    let name = |word: &OsString| Path::new(word).file_name().map(OsStr::to_os_string);
    name(&prefix[0]).is_some_and(|program| program == "autossh")
        || prefix
            .iter()
            .any(|word| name(word).is_some_and(|w| w == "ssh"))
}

/// `arg` as one word for a POSIX shell: in single quotes, each `'` written
/// as `'\''`.
fn quoted(arg: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &byte in arg.as_bytes() {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    OsString::from(OsStr::from_bytes(&out))
}

/// What the loader reads first: the child's environment settings, then the
/// worker's source.
pub(crate) fn preamble(spec: &LaunchSpec) -> Vec<u8> {
    let mut env = vec![if spec.env_clear { b'c' } else { b'k' }];
    let mut set = |key: &OsStr, value: &OsStr| {
        env.push(0);
        env.extend_from_slice(key.as_bytes());
        env.push(0);
        env.extend_from_slice(value.as_bytes());
    };
    for (key, value) in &spec.env {
        set(key, value);
    }
    for (key, value) in spec.worker_settings() {
        set(OsStr::new(key), OsStr::new(&value));
    }
    set(
        OsStr::new(LAUNCHED_ENV),
        OsStr::new(&spec.heartbeat.as_secs_f64().to_string()),
    );
    let source = crate::worker_source::WORKER_PY.as_bytes();
    let mut out = Vec::with_capacity(env.len() + source.len() + 8);
    for block in [&env[..], source] {
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        out.extend_from_slice(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_survives_a_shell_and_quoting_keeps_one_word() {
        assert_eq!(quoted(OsStr::new("a b")), OsString::from("'a b'"));
        assert_eq!(quoted(OsStr::new("it's")), OsString::from("'it'\\''s'"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s {}",
                quoted(OsStr::new("x'y z\"$HOME")).to_string_lossy()
            ))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x'y z\"$HOME");
        let words = |line: &[&str]| line.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(joins_into_a_shell_line(&words(&[
            "/usr/bin/ssh",
            "-T",
            "h"
        ])));
        assert!(joins_into_a_shell_line(&words(&[
            "sshpass", "-e", "ssh", "h"
        ])));
        assert!(joins_into_a_shell_line(&words(&[
            "autossh", "-M", "0", "h"
        ])));
        assert!(!joins_into_a_shell_line(&words(&[
            "docker", "exec", "-i", "box"
        ])));
    }
}
