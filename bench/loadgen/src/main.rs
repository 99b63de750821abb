//! mn-load: a small HTTP/1.1 load generator whose connections come from many client addresses,
//! for measuring client-IP affinity (wrk cannot bind a source address). Each new connection
//! binds the next address of the list (127.0.0.2, 127.0.0.3, …: all of 127.0.0.0/8 is
//! loopback) before it connects, with IP_BIND_ADDRESS_NO_PORT so that the port is picked per
//! 4-tuple at connect time.
//!
//! ```text
//! mn-load --addr 127.0.0.1:8080 [--sources 1000] [--from 127.0.0.2] [--conns 64]
//!         [--threads 2] [--duration 5s] [--keepalive] [--path /]
//! ```
//!
//! Without `--keepalive` every request is on a new connection (`Connection: close`): the
//! connection rate. With it, each connection sends its requests one after another for the
//! whole run. Reports requests/s, errors by kind, and affinity: for each client address, the
//! workers that answered it (`worker=N` in the body, as multinode's hello and mn-http write
//! it). The last line is `key=value` pairs for scripts.
//!
//! Each thread has its own epoll and its own share of the connections and of the addresses
//! (address i belongs to thread i % threads), so nothing is shared until the end.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrStorage, getsockopt, setsockopt, sockopt,
};

struct Args {
    addr: SocketAddr,
    sources: Vec<IpAddr>,
    conns: usize,
    threads: usize,
    duration: Duration,
    keepalive: bool,
    path: String,
}

fn usage(why: &str) -> ! {
    eprintln!("mn-load: {why}");
    eprintln!(
        "usage: mn-load --addr HOST:PORT [--sources N] [--from IP] [--conns N] [--threads N] [--duration SECS] [--keepalive] [--path /]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut addr = None;
    let (mut sources, mut from) = (1000u32, None::<IpAddr>);
    let (mut conns, mut threads, mut secs, mut keepalive) = (64usize, 2usize, 5.0f64, false);
    let mut path = "/".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--addr" => addr = Some(value().parse().unwrap_or_else(|_| usage("bad --addr"))),
            "--sources" => sources = value().parse().unwrap_or_else(|_| usage("bad --sources")),
            "--from" => from = Some(value().parse().unwrap_or_else(|_| usage("bad --from"))),
            "--conns" => conns = value().parse().unwrap_or_else(|_| usage("bad --conns")),
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage("bad --threads")),
            "--duration" => {
                secs = value()
                    .trim_end_matches('s')
                    .parse()
                    .unwrap_or_else(|_| usage("bad --duration (seconds)"))
            }
            "--keepalive" => keepalive = true,
            "--path" => path = value(),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let addr: SocketAddr = addr.unwrap_or_else(|| usage("--addr is required"));
    let from = from.unwrap_or(match addr {
        SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 2]),
        SocketAddr::V6(_) => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
    });
    if sources == 0 || conns == 0 || threads == 0 || !secs.is_finite() || secs <= 0.0 {
        usage("--sources, --conns, --threads and --duration must be positive");
    }
    let threads = threads.min(conns).min(sources as usize);
    let sources = (0..sources)
        .map(|i| match from {
            IpAddr::V4(a) => IpAddr::from(u32::from(a).wrapping_add(i).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from(u128::from(a).wrapping_add(u128::from(i)).to_be_bytes()),
        })
        .collect();
    Args {
        addr,
        sources,
        conns,
        threads,
        duration: Duration::from_secs_f64(secs),
        keepalive,
        path,
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    connect_errors: u64,
    read_errors: u64,
    status_errors: u64,
    /// Per address of this thread (in its order): the workers that answered it.
    workers: Vec<BTreeSet<u32>>,
}

#[derive(PartialEq)]
enum Step {
    Connecting,
    Writing,
    Reading,
}

struct Conn {
    fd: OwnedFd,
    /// Its index among the thread's connections: its epoll data.
    key: u64,
    step: Step,
    /// Index into the thread's addresses.
    source: usize,
    written: usize,
    buf: Vec<u8>,
}

/// One thread's run: `conns` connections, the addresses `mine`, until `end`.
fn run(args: &Args, mine: &[IpAddr], conns: usize, end: Instant) -> Tally {
    let mut t = Tally {
        workers: vec![BTreeSet::new(); mine.len()],
        ..Tally::default()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        args.path,
        args.addr,
        if args.keepalive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create");
    let mut next_source = 0usize;
    let mut slots: Vec<Option<Conn>> = (0..conns).map(|_| None).collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        *slot = open(args, mine, &mut next_source, &epoll, i, &mut t);
    }
    let mut events = vec![EpollEvent::empty(); 256];
    while Instant::now() < end {
        let n = match epoll.wait(&mut events, EpollTimeout::from(100u16)) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let Some(c) = slots[i].as_mut() else { continue };
            match step(args, c, request.as_bytes(), &epoll, &mut t) {
                Ok(true) => {}
                Ok(false) => {
                    // Done with this connection (closed, or failed): the next one.
                    let _ = epoll.delete(c.fd.as_fd());
                    slots[i] = open(args, mine, &mut next_source, &epoll, i, &mut t);
                }
                Err(kind) => {
                    *kind.counter(&mut t) += 1;
                    let _ = epoll.delete(c.fd.as_fd());
                    slots[i] = open(args, mine, &mut next_source, &epoll, i, &mut t);
                }
            }
        }
        // Connections that could not even be created are retried on the next round.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = open(args, mine, &mut next_source, &epoll, i, &mut t);
            }
        }
    }
    t
}

enum Failure {
    Connect,
    Read,
    Status,
}

impl Failure {
    fn counter(self, t: &mut Tally) -> &mut u64 {
        match self {
            Failure::Connect => &mut t.connect_errors,
            Failure::Read => &mut t.read_errors,
            Failure::Status => &mut t.status_errors,
        }
    }
}

/// A new non-blocking connection from the next address, registered with `epoll` as `key`.
fn open(
    args: &Args,
    mine: &[IpAddr],
    next: &mut usize,
    epoll: &Epoll,
    key: usize,
    t: &mut Tally,
) -> Option<Conn> {
    let source = *next % mine.len();
    *next += 1;
    let family = match args.addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let attempt = || -> nix::Result<OwnedFd> {
        let fd = socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        if family == AddressFamily::Inet {
            setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
        }
        let from = SockaddrStorage::from(SocketAddr::new(mine[source], 0));
        socket::bind(fd.as_raw_fd(), &from)?;
        match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(args.addr)) {
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
            Err(e) => Err(e),
        }
    };
    let fd = match attempt() {
        Ok(fd) => fd,
        Err(_) => {
            t.connect_errors += 1;
            return None;
        }
    };
    let ev = EpollEvent::new(EpollFlags::EPOLLOUT, key as u64);
    epoll.add(fd.as_fd(), ev).expect("epoll_ctl add");
    Some(Conn {
        fd,
        key: key as u64,
        step: Step::Connecting,
        source,
        written: 0,
        buf: Vec::with_capacity(512),
    })
}

/// Advances one connection; `Ok(false)` when it is done with (closed after its response).
fn step(
    args: &Args,
    c: &mut Conn,
    request: &[u8],
    epoll: &Epoll,
    t: &mut Tally,
) -> Result<bool, Failure> {
    if c.step == Step::Connecting {
        match getsockopt(&c.fd, sockopt::SocketError) {
            Ok(0) => c.step = Step::Writing,
            _ => return Err(Failure::Connect),
        }
    }
    if c.step == Step::Writing {
        while c.written < request.len() {
            match nix::unistd::write(&c.fd, &request[c.written..]) {
                Ok(n) => c.written += n,
                Err(Errno::EAGAIN) => return Ok(true),
                Err(Errno::EINTR) => {}
                Err(_) => return Err(Failure::Read),
            }
        }
        c.step = Step::Reading;
        c.buf.clear();
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, c.key);
        epoll
            .modify(c.fd.as_fd(), &mut ev)
            .map_err(|_| Failure::Read)?;
        return Ok(true);
    }
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(&c.fd, &mut chunk) {
            Ok(0) => return Err(Failure::Read),
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EAGAIN) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(_) => return Err(Failure::Read),
        }
        let Some((status, worker, whole)) = response(&c.buf) else {
            continue;
        };
        if !whole {
            continue;
        }
        if status != 200 {
            return Err(Failure::Status);
        }
        t.requests += 1;
        if let Some(w) = worker {
            t.workers[c.source].insert(w);
        }
        if !args.keepalive {
            return Ok(false);
        }
        c.written = 0;
        c.step = Step::Writing;
        c.buf.clear();
        let mut ev = EpollEvent::new(EpollFlags::EPOLLOUT, c.key);
        epoll
            .modify(c.fd.as_fd(), &mut ev)
            .map_err(|_| Failure::Read)?;
        return Ok(true);
    }
}

/// (status, the `worker=N` of the body, whether the whole response is in) once the head is.
fn response(buf: &[u8]) -> Option<(u16, Option<u32>, bool)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let whole = buf.len() >= head_end + length;
    let body = &buf[head_end..buf.len().min(head_end + length)];
    let worker = std::str::from_utf8(body).ok().and_then(|b| {
        let rest = &b[b.find("worker=")? + "worker=".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some((status, worker, whole))
}

fn main() {
    let args = parse_args();
    let start = Instant::now();
    let end = start + args.duration;
    let per_thread: Vec<(Vec<IpAddr>, usize)> = (0..args.threads)
        .map(|t| {
            let mine: Vec<IpAddr> = args
                .sources
                .iter()
                .copied()
                .skip(t)
                .step_by(args.threads)
                .collect();
            let conns = args.conns / args.threads + usize::from(t < args.conns % args.threads);
            (mine, conns)
        })
        .collect();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|(mine, conns)| s.spawn(|| run(&args, mine, *conns, end)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let requests = sum(|t| t.requests);
    let (connect, read, status) = (
        sum(|t| t.connect_errors),
        sum(|t| t.read_errors),
        sum(|t| t.status_errors),
    );
    let answered = tallies
        .iter()
        .flat_map(|t| &t.workers)
        .filter(|w| !w.is_empty())
        .count();
    let split = tallies
        .iter()
        .flat_map(|t| &t.workers)
        .filter(|w| w.len() > 1)
        .count();
    let rps = requests as f64 / secs;
    let mode = if args.keepalive {
        "keep-alive"
    } else {
        "new connection per request"
    };
    println!(
        "{} s, {mode}, {} connections from {} addresses, {} threads: {rps:.0} requests/s ({requests} requests), errors: connect {connect}, read {read}, status {status}",
        args.duration.as_secs_f64(),
        args.conns,
        args.sources.len(),
        args.threads
    );
    println!("affinity: {answered} addresses answered, {split} of them by more than one worker");
    println!(
        "rps={rps:.0} requests={requests} errors={} connect_errors={connect} read_errors={read} status_errors={status} addresses={answered} split={split}",
        connect + read + status
    );
}
