//! Test worker that attacks what a worker must not reach (issue 10), and reports what happened.
//!
//! - `mn-attack tty PAYLOAD`: open `/dev/tty` (the controlling terminal, if it has one) and
//!   push PAYLOAD into its input with TIOCSTI, so that the shell the operator started
//!   multinode from would run it; then try the same on fds 0, 1 and 2. Prints one line per
//!   attempt, `mn-attack tty: TARGET: ok` or `... : ERROR`, then its session and terminal.
//! - `mn-attack spoof FILE`: slot 0 waits until FILE holds another worker's pid, then forks a
//!   child that tries to join that worker's process group (`setpgid`) and sends
//!   `READY=1\nSTATUS=spoofed` to NOTIFY_SOCKET, as if it were that worker. Prints
//!   `mn-attack spoof: setpgid: RESULT`. Other slots do nothing. No slot ever notifies for
//!   itself.
//!
//! - `mn-attack orphan-ready`: not an attack: the worker never notifies itself; a helper it
//!   double-forks (so that its parent is no longer in the worker's process tree) sends
//!   `READY=1\nSTATUS=from an orphan`.
//!
//! Then it sleeps until killed.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tty") => tty(args.get(1).map_or("id\n", String::as_str)),
        Some("spoof") => spoof(args.get(1).expect("usage: mn-attack spoof FILE")),
        Some("orphan-ready") => orphan_ready(),
        _ => panic!("usage: mn-attack tty PAYLOAD | mn-attack spoof FILE"),
    }
    loop {
        std::thread::park();
    }
}

fn result(r: libc::c_int) -> String {
    if r < 0 {
        std::io::Error::last_os_error().to_string()
    } else {
        "ok".into()
    }
}

fn inject(fd: libc::c_int, payload: &str) -> String {
    for b in payload.bytes() {
        // SAFETY: TIOCSTI reads one byte from the pointer we pass.
        let r = unsafe { libc::ioctl(fd, libc::TIOCSTI, &b as *const u8) };
        if r < 0 {
            return result(r);
        }
    }
    "ok".into()
}

fn tty(payload: &str) {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        Ok(f) => println!(
            "mn-attack tty: /dev/tty: {}",
            inject(f.as_raw_fd(), payload)
        ),
        Err(e) => println!("mn-attack tty: /dev/tty: {e}"),
    }
    for fd in 0..3 {
        println!("mn-attack tty: fd {fd}: {}", inject(fd, payload));
    }
    // SAFETY: plain queries of this process.
    let (pid, sid) = unsafe { (libc::getpid(), libc::getsid(0)) };
    println!("mn-attack tty: pid {pid} sid {sid}");
}

fn spoof(file: &str) {
    if std::env::var("MULTINODE_WORKER_ID").as_deref() != Ok("0") {
        return;
    }
    let target: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let notify = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
    // SAFETY: the child only makes system calls and formats into a fresh string before
    // _exit; this program is single-threaded here.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: setpgid with plain integers.
            let r = unsafe { libc::setpgid(0, target) };
            println!("mn-attack spoof: setpgid: {}", result(r));
            if let Ok(sock) = UnixDatagram::unbound() {
                let _ = sock.send_to(b"READY=1\nSTATUS=spoofed", &notify);
            }
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        _ => {}
    }
}

fn orphan_ready() {
    let notify = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
    // SAFETY: the children only make system calls and sleep before _exit; this program is
    // single-threaded here.
    unsafe {
        match libc::fork() {
            0 => {
                let middle = libc::getpid();
                if libc::fork() == 0 {
                    // Wait until the middle process is gone and this one was reparented.
                    while libc::getppid() == middle {
                        libc::usleep(10_000);
                    }
                    if let Ok(sock) = UnixDatagram::unbound() {
                        let _ = sock.send_to(b"READY=1\nSTATUS=from an orphan", &notify);
                    }
                    loop {
                        libc::pause();
                    }
                }
                libc::_exit(0);
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut st = 0;
                libc::waitpid(child, &mut st, 0);
            }
        }
    }
}
