//! Test worker: prints, as one line, what it inherited from multinode (the worker contract)
//! and then serves `probe` on every inherited TCP socket until killed.
//!
//! Line format: `probe pid=P listen_pid=.. listen_fds=.. listen_fdnames=.. worker_id=..
//! workers=.. generation=.. uid=U gid=G groups=a,b fds=0,1,2,3 sdk=name:kind,...`

use std::io::{Read, Write};

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| "-".into())
}

fn main() {
    // Read the raw contract before the SDK consumes (and removes) the LISTEN_* variables.
    let raw = format!(
        "listen_pid={} listen_fds={} listen_fdnames={} worker_id={} workers={} generation={}",
        env("LISTEN_PID"),
        env("LISTEN_FDS"),
        env("LISTEN_FDNAMES"),
        env("MULTINODE_WORKER_ID"),
        env("MULTINODE_WORKERS"),
        env("MULTINODE_GENERATION"),
    );
    let fds = open_fds();
    // SAFETY: plain libc getters without preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let groups = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Groups:")
                .map(|g| g.split_whitespace().collect::<Vec<_>>().join(","))
        })
        .unwrap_or_default();
    let listeners = multinode_worker::listeners().expect("listeners()");
    let mut sdk = Vec::new();
    let mut tcp = Vec::new();
    for (name, l) in listeners {
        match l {
            multinode_worker::Listener::Tcp(t) => {
                sdk.push(format!("{name}:tcp"));
                tcp.push(t);
            }
            multinode_worker::Listener::Unix(_) => sdk.push(format!("{name}:unix")),
            #[allow(unreachable_patterns)]
            _ => sdk.push(format!("{name}:other")),
        }
    }
    println!(
        "probe pid={} {raw} uid={uid} gid={gid} groups={groups} fds={} sdk={}",
        std::process::id(),
        fds.join(","),
        sdk.join(",")
    );
    let _ = std::io::stdout().flush();
    let mut threads = Vec::new();
    for t in tcp {
        threads.push(std::thread::spawn(move || {
            for mut c in t.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let body = format!("probe pid={}\n", std::process::id());
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::park();
    }
}

/// The open fds, without the one read_dir itself holds on /proc/self/fd.
fn open_fds() -> Vec<String> {
    let me = format!("/proc/{}/fd", std::process::id());
    let mut fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy() != me)
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds.iter().map(|f| f.to_string()).collect()
}
