//! The pids cgroup that bounds a sandboxed child's processes: one group per
//! child, made under this process's own group of the pids controller, its
//! `pids.max` set before the child is moved into it (by this process, as
//! soon as the child is started or forked; `python/sandbox.py` waits to
//! see itself there before it forks anything). A cgroup counts
//! every process and thread, whoever runs them: root's too, which
//! `RLIMIT_NPROC` does not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::PyRunnerError;

/// The folder children's groups are made in.
#[derive(Debug)]
pub(crate) struct Parent {
    dir: PathBuf,
    /// The group's path as `/proc/<pid>/cgroup` names it.
    path: String,
}

/// One child's group.
#[derive(Debug)]
pub(crate) struct Group {
    dir: PathBuf,
    /// Its path as `/proc/<pid>/cgroup` names it, for the child to see
    /// itself in it.
    path: String,
}

/// How often, and how far apart, a group is tried when its child is
/// dropped before it is left for later.
pub(crate) const REMOVE_TRIES: u32 = 5;
const REMOVE_GAP: Duration = Duration::from_millis(2);

/// The largest `pids.max` the kernel takes (`PIDS_MAX`, 2^22 + 1, less one);
/// a larger bound is written as `max`.
const PIDS_MAX: u32 = 1 << 22;

impl Parent {
    /// This process's group of the pids controller: of a cgroup v1 pids
    /// hierarchy, or of the v2 hierarchy if pids is given to its subgroups.
    pub fn find() -> Result<Parent, PyRunnerError> {
        let missing = |why: String| {
            PyRunnerError::Startup(format!(
                "sandbox: max_processes needs the pids cgroup controller, made writable for \
                 this process (cgroup v1's pids hierarchy, or a delegated cgroup v2 group with \
                 pids in its cgroup.subtree_control): {why}"
            ))
        };
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|err| missing(format!("/proc/self/cgroup: {err}")))?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|err| missing(format!("/proc/self/mountinfo: {err}")))?;
        let v1 = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == "pids").then_some(path)
        });
        let (fstype, path) = match v1 {
            Some(path) => ("cgroup", path),
            None => match own.lines().find_map(|line| line.strip_prefix("0::")) {
                Some(path) => ("cgroup2", path),
                None => return Err(missing("this process is in no pids cgroup".into())),
            },
        };
        let dir = mounts
            .lines()
            .find_map(|line| hierarchy(line, fstype, path))
            .ok_or_else(|| missing(format!("no {fstype} mount holds {path}")))?;
        if fstype == "cgroup2" {
            let delegated =
                std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            if !delegated.split_whitespace().any(|c| c == "pids") {
                return Err(missing(format!(
                    "{} does not give pids to its subgroups",
                    dir.display()
                )));
            }
        }
        // SAFETY: access(2) reads the NUL-ended path and nothing else.
        let writable = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
            .unwrap_or(false);
        if !writable {
            return Err(missing(format!("{} is not writable", dir.display())));
        }
        Ok(Parent {
            dir,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The folder groups are made in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the group `name` with room for `max` processes and threads.
    pub fn make(&self, name: &str, max: u32) -> Result<Group, PyRunnerError> {
        let dir = self.dir.join(name);
        let failed = |what: &str, dir: &Path, err: std::io::Error| {
            PyRunnerError::Startup(format!(
                "sandbox: could not {what} the pids cgroup {}: {err}",
                dir.display()
            ))
        };
        std::fs::create_dir(&dir).map_err(|err| failed("make", &dir, err))?;
        let group = Group {
            dir,
            path: format!("{}/{name}", self.path),
        };
        let bound = if max > PIDS_MAX {
            "max".to_string()
        } else {
            max.to_string()
        };
        if let Err(err) = std::fs::write(group.dir.join("pids.max"), bound) {
            let err = failed("bound", &group.dir, err);
            group.remove(1);
            return Err(err);
        }
        Ok(group)
    }
}

/// The cgroup folder under the mount `line` of /proc/self/mountinfo, if it
/// mounts a hierarchy of type `fstype` (of the pids controller, for v1)
/// holding the group `path`.
fn hierarchy(line: &str, fstype: &str, path: &str) -> Option<PathBuf> {
    let (left, right) = line.split_once(" - ")?;
    let mut right = right.split(' ');
    if right.next()? != fstype {
        return None;
    }
    let options = right.nth(1)?;
    if fstype == "cgroup" && !options.split(',').any(|o| o == "pids") {
        return None;
    }
    let mut left = left.split(' ');
    let root = unescape(left.nth(3)?);
    let mount = unescape(left.next()?);
    let inner = Path::new(path).strip_prefix(&root).ok()?;
    Some(Path::new(&mount).join(inner))
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'\\'
            && at + 3 < bytes.len()
            && bytes[at + 1..at + 4].iter().all(u8::is_ascii_digit)
        {
            let code =
                (bytes[at + 1] - b'0') * 64 + (bytes[at + 2] - b'0') * 8 + (bytes[at + 3] - b'0');
            out.push(code);
            at += 4;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Group {
    /// Its path as `/proc/<pid>/cgroup` names it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Moves process `pid`, and every thread of it, into the group. The
    /// kernel may take a grace period of its RCU for it (10 to 20 ms here),
    /// which is why this process does it, while the child starts, rather
    /// than the child itself.
    pub fn admit(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// Removes the group, trying `tries` times (a process of it may not
    /// have been released yet); true once it is gone.
    pub fn remove(&self, tries: u32) -> bool {
        for attempt in 0..tries {
            if attempt > 0 {
                std::thread::sleep(REMOVE_GAP);
            }
            if remove_dir(&self.dir) {
                return true;
            }
        }
        false
    }
}

/// Removes an empty group; true if it is gone.
fn remove_dir(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_v1_pids_hierarchy_under_its_root() {
        let line = "40 30 0:35 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids";
        assert_eq!(
            hierarchy(line, "cgroup", "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/a/b"))
        );
        let memory = "41 30 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(hierarchy(memory, "cgroup", "/a"), None);
        let nested = "42 30 0:35 /a /mnt/my\\040pids rw - cgroup cgroup rw,pids";
        assert_eq!(
            hierarchy(nested, "cgroup", "/a/b"),
            Some(PathBuf::from("/mnt/my pids/b"))
        );
        let v2 = "43 30 0:37 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(
            hierarchy(v2, "cgroup2", "/user.slice"),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice"))
        );
    }
}
