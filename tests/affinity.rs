//! examples/affinity, the port of the 2010 article's master.js/worker.js, under
//! `multinode serve --route ip-hash`: it answers `process=<pid>; reqno=<n>; client=<ip>;
//! visits=<v>`, where `reqno` is the supervisor's sequence number of the connection (master.js's
//! `++numReqs`) and `visits` the client's requests as its worker has seen them; and it drains
//! like examples/hello, so rolling reloads under keep-alive load fail no request.
//!
//! Clients are kept-alive connections on loopback, each from its own source address
//! (127.0.0.1, 127.0.0.2, ...: ip-hash sends each to one slot).

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const WORKERS: usize = 3;
/// Client threads, each with its own source address.
const CLIENTS: u8 = 5;
const RELOADS: u64 = 3;
/// A client's pause between two requests: its connection is idle most of the time, as a
/// pooled client's is, which is when a drain that closes idle connections at once loses the
/// request on its way.
const PACE: Duration = Duration::from_millis(2);
/// Bounds on the load.
const MAX_REQUESTS_PER_CLIENT: u64 = 20_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(180);

/// One answer of affinity.
#[derive(Debug)]
struct Answer {
    pid: i32,
    reqno: u64,
    client: String,
    visits: u64,
}

fn parse_answer(body: &str) -> Option<Answer> {
    let field = |k: &str| body_field(body, k);
    Some(Answer {
        pid: field("process")?.parse().ok()?,
        reqno: field("reqno")?.parse().ok()?,
        client: field("client")?.to_string(),
        visits: field("visits")?.parse().ok()?,
    })
}

/// A connection a client opened, and what came back on it.
struct Conn {
    /// Before the connect.
    opened: Instant,
    /// When its first answer was read.
    first_answer: Option<Instant>,
    /// The `reqno` and pid of its first answer (every answer on it must repeat them).
    reqno: Option<u64>,
    pid: Option<i32>,
    answers: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the connection with reqno {:?} to pid {:?}, {} answer(s)",
            self.reqno, self.pid, self.answers
        )
    }
}

#[derive(Default)]
struct ClientLog {
    /// Requests sent, and answered with 200 by affinity.
    sent: u64,
    ok: u64,
    /// Connections the server ended in a response (`Connection: close`).
    closed_in_response: u64,
    /// (pid, visits) of every answer, in order.
    answers: Vec<(i32, u64)>,
    pids: HashSet<i32>,
    conns: Vec<Conn>,
    failures: Vec<String>,
}

/// A TCP connection to `dst` from source address `src` (bind before connect, which std cannot
/// do); connecting gives up after 10 s.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::other("IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket has no memory preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    let local = sockaddr(src, 0);
    let remote = sockaddr(*dst.ip(), dst.port());
    // SAFETY: valid pointers to values of the lengths given.
    unsafe {
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        let tv_ptr = (&tv as *const libc::timeval).cast();
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            tv_ptr,
            tv_len,
        ) < 0
            || libc::bind(
                fd.as_raw_fd(),
                (&local as *const libc::sockaddr_in).cast(),
                len,
            ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        while libc::connect(
            fd.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        ) < 0
        {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(TcpStream::from(fd))
}

/// Requests on a kept-alive connection from `src`, a new one after a response with
/// `Connection: close`, until `stop` (or the bounds run out).
///
/// Failures: a request that gets no response or a bad one; a kept-alive connection the server
/// closes while it is idle with no `Connection: close` (checked before each reuse, as a pooled
/// HTTP client does; no request is sent on it); an answer on one connection whose `reqno` or
/// pid differs from the first answer's on it; an answer naming another client.
fn client(src: Ipv4Addr, addr: SocketAddr, stop: &AtomicBool, log: &Mutex<ClientLog>) {
    let start = Instant::now();
    let mut n = 0;
    let mut conn: Option<KeepAlive> = None;
    while !stop.load(Ordering::SeqCst)
        && n < MAX_REQUESTS_PER_CLIENT
        && start.elapsed() < MAX_LOAD_TIME
    {
        if conn.as_ref().is_some_and(KeepAlive::closed_by_server) {
            let mut l = log.lock().unwrap();
            let c = l.conns.last().map(|c| format!("{c:?}")).unwrap_or_default();
            l.failures.push(format!(
                "at {:?}, {c} was closed by the server while idle, with no \
                 `Connection: close`",
                start.elapsed()
            ));
            conn = None;
        }
        if conn.is_none() {
            let opened = Instant::now();
            let made = connect_from(src, addr)
                .and_then(KeepAlive::from_stream)
                .and_then(|c| c.set_nodelay().map(|()| c));
            let mut l = log.lock().unwrap();
            match made {
                Ok(c) => {
                    conn = Some(c);
                    l.conns.push(Conn {
                        opened,
                        first_answer: None,
                        reqno: None,
                        pid: None,
                        answers: 0,
                    });
                }
                Err(e) => {
                    l.failures
                        .push(format!("connect at {:?}: {e}", start.elapsed()));
                    drop(l);
                    std::thread::sleep(PACE);
                    continue;
                }
            }
        }
        n += 1;
        let res = conn.as_mut().unwrap().get("/");
        let now = Instant::now();
        let mut guard = log.lock().unwrap();
        let l = &mut *guard;
        let c = l.conns.last_mut().unwrap();
        let at = start.elapsed();
        l.sent += 1;
        match res {
            Ok((200, body, close)) => match parse_answer(&body) {
                Some(a) if a.client == src.to_string() => {
                    if c.reqno.is_none() {
                        (c.reqno, c.pid, c.first_answer) = (Some(a.reqno), Some(a.pid), Some(now));
                    } else if (c.reqno, c.pid) != (Some(a.reqno), Some(a.pid)) {
                        l.failures.push(format!(
                            "request {n}: {a:?} on a connection first answered with reqno \
                             {:?} by pid {:?}",
                            c.reqno, c.pid
                        ));
                    }
                    c.answers += 1;
                    l.ok += 1;
                    l.answers.push((a.pid, a.visits));
                    l.pids.insert(a.pid);
                    if close {
                        l.closed_in_response += 1;
                        conn = None;
                    }
                }
                _ => {
                    l.failures
                        .push(format!("request {n} from {src}: answered {body:?}"));
                    conn = None;
                }
            },
            Ok((status, body, _)) => {
                l.failures.push(format!("request {n}: {status} {body:?}"));
                conn = None;
            }
            Err(e) => {
                l.failures.push(format!(
                    "at {at:?}, request {n} got no response on {c:?}: {e}"
                ));
                conn = None;
            }
        }
        drop(guard);
        std::thread::sleep(PACE);
    }
}

/// Sets the flag when dropped: the client threads end, also when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Three SIGHUP reloads of 3 affinity workers under `--route ip-hash` while 5 clients, each from
/// its own address, make requests on kept-alive connections; each reload starts once every
/// client has been answered by the previous one's new workers. No request fails; `reqno` is the
/// supervisor's connection number (the same on every answer of a connection, unique across
/// workers and generations, increasing in the order the connections were made); `visits`
/// climbs 1, 2, 3, … for each client on each worker that served it.
#[test]
fn reloads_under_keep_alive_load_fail_no_request_and_reqno_numbers_connections() {
    let affinity = worker_bin("affinity").display().to_string();
    let workers = WORKERS.to_string();
    let mn = Multinode::serve(&[
        "--route",
        "ip-hash",
        "-w",
        &workers,
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--",
        &affinity,
    ]);
    let addr = mn.tcp_addr("listen0");
    mn.wait_ready(WORKERS);
    let sources: Vec<Ipv4Addr> = (1..=CLIENTS).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let logs: Vec<Mutex<ClientLog>> = sources.iter().map(|_| Mutex::default()).collect();
    let stop = AtomicBool::new(false);

    // Waits until every client has been answered by one of generation `g`'s workers.
    let wait_served_by = |g: u64| {
        let pids = mn.generation_pids(g);
        let all = eventually(DEADLINE, || {
            logs.iter()
                .all(|l| l.lock().unwrap().pids.iter().any(|p| pids.contains(p)))
        });
        assert!(
            all,
            "not every client was answered by generation {g} ({pids:?}); output:\n{}",
            mn.output()
        );
    };
    std::thread::scope(|s| {
        for (src, log) in sources.iter().zip(&logs) {
            let stop = &stop;
            s.spawn(move || client(*src, addr, stop, log));
        }
        let _stop = StopOnDrop(&stop);
        wait_served_by(1);
        for generation in 2..2 + RELOADS {
            mn.signal(libc::SIGHUP);
            let end = mn.wait_any(&format!("the end of the reload to {generation}"), |e| {
                (e.is("reloaded") || e.is("reload-failed")) && e.generation() == Some(generation)
            });
            assert!(end.is("reloaded"), "{end}\noutput:\n{}", mn.output());
            wait_served_by(generation);
        }
    });
    let logs: Vec<ClientLog> = logs.into_iter().map(|l| l.into_inner().unwrap()).collect();

    let failures: Vec<&String> = logs.iter().flat_map(|l| &l.failures).collect();
    let sent: u64 = logs.iter().map(|l| l.sent).sum();
    let ok: u64 = logs.iter().map(|l| l.ok).sum();
    let conns: Vec<&Conn> = logs.iter().flat_map(|l| &l.conns).collect();
    let in_response: u64 = logs.iter().map(|l| l.closed_in_response).sum();
    assert!(
        failures.is_empty(),
        "{} request(s) failed ({ok} of {sent} answered) across {RELOADS} reloads; the first ones:\n{}\n\
         output:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        mn.output()
    );
    eprintln!(
        "{RELOADS} reloads: {sent} requests sent, {ok} answered, 0 failed; {} connections, \
         {in_response} ended by the server in a response",
        conns.len()
    );

    // reqno: the supervisor's number of each connection, unique across workers...
    let mut seen: HashMap<u64, i32> = HashMap::new();
    for c in &conns {
        let (reqno, pid) = (c.reqno.unwrap(), c.pid.unwrap());
        assert!(reqno >= 1, "{c:?}");
        if let Some(other) = seen.insert(reqno, pid) {
            panic!("reqno {reqno} on two connections (pids {other} and {pid})");
        }
    }
    let pids: HashSet<i32> = seen.values().copied().collect();
    assert!(
        pids.len() >= 2 * (1 + RELOADS as usize),
        "the 5 client addresses hash to one slot of 3, so uniqueness across workers is not \
         shown: {pids:?}"
    );
    // ... and increasing in the order the supervisor accepted the connections: one answered
    // before another was opened was accepted before it.
    for b in &conns {
        for a in conns.iter().filter(|a| a.first_answer.unwrap() < b.opened) {
            assert!(
                a.reqno < b.reqno,
                "{a:?} was answered before {b:?} was opened, with a larger reqno"
            );
        }
    }

    // visits: each client sticks to one worker per generation, where its visits climb from 1.
    for (src, l) in sources.iter().zip(&logs) {
        let mut runs: Vec<(i32, u64)> = Vec::new();
        for &(pid, visits) in &l.answers {
            match runs.last_mut() {
                Some((p, n)) if *p == pid => *n += 1,
                _ => {
                    assert!(
                        runs.iter().all(|(p, _)| *p != pid),
                        "client {src} went back to pid {pid}: {runs:?}"
                    );
                    runs.push((pid, 1));
                }
            }
            let expected = runs.last().unwrap().1;
            assert_eq!(visits, expected, "client {src} on pid {pid}: {runs:?}");
        }
        assert_eq!(
            runs.len(),
            1 + RELOADS as usize,
            "client {src}: one worker per generation: {runs:?}"
        );
    }

    // The replaced workers drained and exited by themselves; so does the rest on SIGTERM.
    let mut mn = mn;
    mn.signal(libc::SIGTERM);
    assert_eq!(mn.wait_exit().code(), Some(0), "{}", mn.output());
    let killed = mn
        .events("exited")
        .iter()
        .any(|e| e.signal() == Some("SIGKILL") || e.code() != Some(0));
    assert!(
        mn.events("kill").is_empty() && !killed,
        "a worker did not drain and exit 0 by itself:\n{}",
        mn.output()
    );
}
