//! The sshd fixture (`sshd::Sshd`) itself: it starts and lets the prefix
//! run the tests' Python; stdin and stdout carry any bytes intact; two run
//! at once; dropping one ends its sessions and closes its port.

use crate::faults::is_running;
use crate::sshd::{remote_python, sh_quote, Sshd};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn the_prefix_runs_the_tests_python() {
    let sshd = Sshd::start();
    let python = remote_python();
    let out = sshd
        .command(&[
            sh_quote(&python),
            "-c".into(),
            sh_quote("import sys; print(6*7, sys.executable)"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs");
    assert!(
        out.status.success(),
        "{}; stderr: {}; sshd: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("42 {python}\n")
    );
}

#[test]
fn stdin_and_stdout_carry_every_byte_both_ways() {
    let sshd = Sshd::start();
    let sent: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut child = sshd
        .command(&["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let sent = sent.clone();
        // Written while the reply is read: neither pipe fills and stalls.
        thread::spawn(move || stdin.write_all(&sent))
    };
    let mut received = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut received)
        .unwrap();
    writer.join().unwrap().expect("all of stdin written");
    assert!(child.wait().unwrap().success());
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the bytes came back changed");
}

#[test]
fn two_run_at_once_and_a_dropped_one_ends_its_sessions_and_port() {
    let (one, two) = thread::scope(|s| {
        let one = s.spawn(Sshd::start);
        let two = s.spawn(Sshd::start);
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_ne!(one.port(), two.port());

    // A session left running on the first: its shell's pid, then a sleep.
    let mut session = one
        .command(&["echo $$; exec sleep 300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // "Connection to 127.0.0.1 closed by remote host."
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh runs");
    let mut line = String::new();
    BufReader::new(session.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let remote: u32 = line.trim().parse().expect("the remote shell's pid");
    assert!(is_running(remote));

    let port = one.port();
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(remote) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_running(remote), "the remote sleep outlived the fixture");
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still takes connections"
    );
    // The client sees its connection end.
    assert!(!session.wait().unwrap().success());

    // The other serves on.
    let out = two.command(&["echo", "still"]).output().unwrap();
    assert_eq!(out.stdout, b"still\n");
}
