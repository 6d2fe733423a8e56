//! The kernel's part of a sandbox: the landlock ruleset (filesystem, TCP,
//! signals and abstract sockets) made by the landlock crate, and the seccomp
//! filter compiled by seccompiler. Both are made here and entered by the
//! child (`python/sandbox.py`).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::PyRunnerError;
use crate::sandbox::Sandbox;

/// The landlock ABI every sandbox needs: 3 (Linux 6.2), the first that
/// governs truncation; before it a child could truncate any file it may
/// not write. What later ABIs add is taken where the kernel has it
/// (TCP rules, ABI 4; scoped signals and abstract sockets, ABI 6), as the
/// namespaces and the socket filter already give those rules.
const LEAST_ABI: u32 = 3;

/// The newest access rights asked for: ABI 5's (device ioctls).
const NEWEST_FS: ABI = ABI::V5;

/// `landlock_restrict_self(2)`'s number, for the child to call.
pub(crate) const RESTRICT_SELF: libc::c_long = libc::SYS_landlock_restrict_self;

/// `mount_setattr(2)`'s number, for the child to call.
pub(crate) const MOUNT_SETATTR: libc::c_long = libc::SYS_mount_setattr;

/// Fails with `Startup` naming what this kernel lacks for `sandbox`.
pub(crate) fn check_kernel(sandbox: &Sandbox) -> Result<(), PyRunnerError> {
    let needed = sandbox.landlock_abi.unwrap_or(0).max(LEAST_ABI);
    // SAFETY: with a null attribute, size 0 and the VERSION flag, the call
    // only returns the kernel's landlock ABI (or -1); it touches no memory.
    let kernel = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if kernel < 0 {
        let err = std::io::Error::last_os_error();
        let why = match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => {
                "landlock is built into this kernel but not enabled (add it to the lsm= boot \
                 parameter)"
                    .to_string()
            }
            Some(libc::ENOSYS) => "this kernel has no landlock (Linux 5.13 and later)".into(),
            _ => format!("asking for landlock's ABI failed: {err}"),
        };
        return Err(PyRunnerError::Startup(format!(
            "sandbox: the filesystem rules need landlock ABI {needed} or later: {why}"
        )));
    }
    if (kernel as u32) < needed {
        return Err(PyRunnerError::Startup(format!(
            "sandbox: the filesystem rules need landlock ABI {needed} or later, and this \
             kernel has ABI {kernel}{}",
            if needed == LEAST_ABI {
                " (ABI 3 is Linux 6.2)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// What every sandboxed child may read besides its interpreter's folders:
/// the shared libraries its extension modules load, the loader's cache,
/// time zones, the number of CPUs, and the harmless devices.
pub(crate) fn system_paths() -> Vec<PathBuf> {
    [
        "/lib",
        "/lib32",
        "/lib64",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/share/zoneinfo",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/sys/devices/system/cpu",
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|path| path.exists())
    .collect()
}

/// A landlock ruleset letting the child read (and run) `read` and write
/// `write`, and nothing else; no TCP unless `sandbox.network`; no signal
/// or abstract socket outside it.
pub(crate) fn ruleset(
    sandbox: &Sandbox,
    read: &[PathBuf],
    write: &[PathBuf],
) -> Result<OwnedFd, PyRunnerError> {
    let failed = |err: RulesetError| {
        PyRunnerError::Startup(format!(
            "sandbox: could not make the landlock ruleset: {err}"
        ))
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi(LEAST_ABI)))
        .map_err(failed)?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(NEWEST_FS))
        .map_err(failed)?;
    if !sandbox.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(ABI::V4))
            .map_err(failed)?;
    }
    let null = Path::new("/dev/null");
    let created = ruleset
        .scope(Scope::from_all(ABI::V6))
        .map_err(failed)?
        .create()
        .map_err(failed)?
        .add_rules(path_beneath_rules(
            read.iter().filter(|path| path.as_path() != null),
            AccessFs::from_read(NEWEST_FS),
        ))
        .map_err(failed)?
        .add_rules(path_beneath_rules(
            write.iter().map(PathBuf::as_path).chain([null]),
            AccessFs::from_all(NEWEST_FS),
        ))
        .map_err(failed)?;
    Option::<OwnedFd>::from(created).ok_or_else(|| {
        PyRunnerError::Startup("sandbox: the kernel made no landlock ruleset".into())
    })
}

fn abi(number: u32) -> ABI {
    match number {
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => ABI::V6,
    }
}

/// Calls a sandboxed child is refused whatever its rules, as EACCES
/// (`PermissionError`): mounts and namespaces (a mount's read-only flag,
/// set by the child itself, could be cleared with `mount_setattr`, which no
/// security module governs), the kernel's keyrings, BPF, performance
/// counters, `userfaultfd`, and io_uring (whose requests open files and
/// make sockets without the system calls).
const ALWAYS_DENIED: [libc::c_long; 19] = [
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_mount_setattr,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
];

/// The namespace flags of `clone(2)`: a child makes no namespace, as it
/// may not `unshare` one (a user namespace would give it capabilities
/// again, over a fresh namespace: kernel code it has no business reaching).
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The filters, each hex-encoded for the child (8-byte instructions in
/// native byte order) and joined by commas:
/// - EACCES for [`ALWAYS_DENIED`], `clone` with a namespace flag, `socket`
///   for every family without network, and with it for every family but
///   `AF_INET`, `AF_INET6` and `AF_NETLINK` (Unix sockets on the
///   filesystem, a container engine's say, are no part of a network), and
///   `socketpair` but of Unix stream sockets (asyncio's and
///   `multiprocessing.Pipe`'s; a datagram one could `sendto` a path).
/// - ENOSYS for `clone3`, whose flags are out of a filter's reach: the C
///   library then falls back to `clone`.
pub(crate) fn filter(sandbox: &Sandbox) -> Result<String, PyRunnerError> {
    let failed = |why: String| {
        PyRunnerError::Startup(format!(
            "sandbox: could not compile the seccomp filter: {why}"
        ))
    };
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|err| failed(err.to_string()))?;
    let rule = |conditions: Vec<(u8, SeccompCmpArgLen, SeccompCmpOp, u64)>| {
        conditions
            .into_iter()
            .map(|(arg, len, op, value)| SeccompCondition::new(arg, len, op, value))
            .collect::<Result<Vec<_>, _>>()
            .and_then(SeccompRule::new)
            .map_err(|err| failed(err.to_string()))
    };
    let family =
        |op: SeccompCmpOp, value: libc::c_int| (0, SeccompCmpArgLen::Dword, op, value as u64);
    let socket = if sandbox.network {
        // Any family but IP's and netlink's (which IP's name lookups use).
        vec![rule(vec![
            family(SeccompCmpOp::Ne, libc::AF_INET),
            family(SeccompCmpOp::Ne, libc::AF_INET6),
            family(SeccompCmpOp::Ne, libc::AF_NETLINK),
        ])?]
    } else {
        Vec::new() // every call
    };
    // A Unix datagram pair could be pointed at a daemon's socket on the
    // filesystem (`sendto` a path); stream pairs cannot. Other families
    // would only load kernel modules for nothing.
    let socketpair = vec![
        rule(vec![family(SeccompCmpOp::Ne, libc::AF_UNIX)])?,
        rule(vec![(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xf),
            libc::SOCK_DGRAM as u64,
        )])?,
    ];
    let clone = CLONE_NAMESPACES
        .into_iter()
        .map(|flag| {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|condition| SeccompRule::new(vec![condition]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| failed(err.to_string()))?;
    // c_long is i64 here, i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let denied: Vec<(i64, Vec<SeccompRule>)> = ALWAYS_DENIED
        .into_iter()
        .map(|call| (i64::from(call), Vec::new()))
        .chain([
            (i64::from(libc::SYS_socket), socket),
            (i64::from(libc::SYS_socketpair), socketpair),
            (i64::from(libc::SYS_clone), clone),
        ])
        .collect();
    #[allow(clippy::useless_conversion)]
    let absent = vec![(i64::from(libc::SYS_clone3), Vec::new())];
    let mut programs = Vec::new();
    for (calls, errno) in [(denied, libc::EACCES), (absent, libc::ENOSYS)] {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (call, chain) in calls {
            // x86-64's x32 calls carry the same arch and the number with
            // this bit: the same calls again under those numbers.
            if cfg!(target_arch = "x86_64") {
                rules.insert(call | X32_SYSCALL_BIT, chain.clone());
            }
            rules.insert(call, chain);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|err| failed(err.to_string()))?;
        let program = BpfProgram::try_from(filter).map_err(|err| failed(err.to_string()))?;
        let mut bytes = Vec::with_capacity(program.len() * 8);
        for op in &program {
            bytes.extend_from_slice(&op.code.to_ne_bytes());
            bytes.push(op.jt);
            bytes.push(op.jf);
            bytes.extend_from_slice(&op.k.to_ne_bytes());
        }
        programs.push(super::hex(&bytes));
    }
    Ok(programs.join(","))
}

/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;
