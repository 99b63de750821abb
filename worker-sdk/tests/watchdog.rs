//! The watchdog helper and the accept with a timeout, through the public API, in a process of
//! their own: the stop request and the environment are process-wide, and these tests change
//! both.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use multinode_worker::{Listener, RouteChannel, Watchdog};

/// Long enough that a test never waits for it without a bug: an accept that should have
/// returned and did not.
const STUCK: Duration = Duration::from_secs(20);

fn timed_out<T: std::fmt::Debug>(r: io::Result<T>) -> bool {
    matches!(r, Err(ref e) if e.kind() == io::ErrorKind::TimedOut)
}

/// `from_env` reads WATCHDOG_USEC/WATCHDOG_PID as sd_watchdog_enabled(3) does and removes
/// them; the pings reach NOTIFY_SOCKET. The only test here that touches the environment.
#[test]
fn from_env_reads_removes_and_pings() {
    let dir = std::env::temp_dir().join(format!("mn-sdk-watchdog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let _ = std::fs::remove_file(&path);
    let server = UnixDatagram::bind(&path).unwrap();
    server.set_read_timeout(Some(STUCK)).unwrap();
    let recv = || {
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let me = std::process::id().to_string();
    let set = |usec: &str, pid: Option<&str>| {
        // SAFETY: no other test of this process touches the environment, and nothing here
        // runs C code that reads it concurrently.
        unsafe {
            std::env::set_var("WATCHDOG_USEC", usec);
            match pid {
                Some(p) => std::env::set_var("WATCHDOG_PID", p),
                None => std::env::remove_var("WATCHDOG_PID"),
            }
            std::env::set_var("NOTIFY_SOCKET", &path);
        }
    };
    let gone = || {
        std::env::var_os("WATCHDOG_USEC").is_none() && std::env::var_os("WATCHDOG_PID").is_none()
    };

    set("1500000", Some(&me));
    let w = Watchdog::from_env()
        .unwrap()
        .expect("a watchdog for this pid");
    assert_eq!(w.interval(), Duration::from_millis(1500));
    assert!(gone(), "both variables removed");
    assert!(Watchdog::from_env().unwrap().is_none(), "read once");
    assert!(w.due_in() <= Duration::from_millis(750));
    assert!(w.ping().unwrap());
    assert_eq!(recv(), "WATCHDOG=1");

    // No WATCHDOG_PID: ours. Another pid: not ours, removed all the same.
    set("2000000", None);
    assert_eq!(
        Watchdog::from_env().unwrap().map(|w| w.interval()),
        Some(Duration::from_secs(2))
    );
    set("2000000", Some("1"));
    assert!(Watchdog::from_env().unwrap().is_none());
    assert!(gone());
    set("0", Some(&me));
    let e = Watchdog::from_env().unwrap_err();
    assert!(e.to_string().contains("WATCHDOG_USEC=\"0\""), "{e}");
    assert!(gone(), "removed on error too");
    // SAFETY: as above.
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    // No NOTIFY_SOCKET: nothing to ping, not an error.
    assert!(!w.ping().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connected Unix SOCK_SEQPACKET pair: (supervisor's end, worker's route channel).
fn route_pair() -> (OwnedFd, RouteChannel) {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two new fds into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are new and owned only here.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (a, RouteChannel::new(b).unwrap())
}

/// `accept_timeout`: a connection when there is one, `TimedOut` when none comes, on a blocking
/// or non-blocking socket and on a route channel; in time even when another thread takes the
/// connection between its poll and its accept; `None` once a stop is requested. The only test
/// here that requests a stop.
#[test]
fn accept_timeout_returns_in_time() {
    let stop = multinode_worker::catch_stop_signals().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let l = Listener::from(tcp);

    // Idle: TimedOut, never before the timeout.
    let t = Instant::now();
    assert!(timed_out(
        l.accept_timeout(&stop, Duration::from_millis(50))
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(timed_out(l.accept_timeout(&stop, Duration::ZERO)));
    // A pending connection is taken, also with a zero timeout.
    let _c = TcpStream::connect(addr).unwrap();
    assert!(l.accept_timeout(&stop, Duration::ZERO).unwrap().is_some());
    let _c = TcpStream::connect(addr).unwrap();
    assert!(l.accept_timeout(&stop, STUCK).unwrap().is_some());

    // Non-blocking: the same.
    let nb = Listener::from(TcpListener::bind("127.0.0.1:0").unwrap());
    nb.set_nonblocking(true).unwrap();
    assert!(timed_out(
        nb.accept_timeout(&stop, Duration::from_millis(20))
    ));

    // Blocking, with a rival already waiting in accept(2): the kernel hands it each
    // connection, while poll wakes this acceptor too, whose accept then finds nothing. It
    // must still return at its deadline (the alarm), not wait for the next connection.
    let rival = l.try_clone().unwrap();
    let (took_tx, took) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(a) = rival.accept() {
            if took_tx.send(a).is_err() {
                break;
            }
        }
    });
    let mut lost = 0;
    for _ in 0..20 {
        let l2 = l.try_clone().unwrap();
        let stop2 = stop.clone();
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            let r = l2.accept_timeout(&stop2, Duration::from_millis(200));
            let _ = done_tx.send(r.map(|a| a.is_some()));
        });
        thread::sleep(Duration::from_millis(20)); // both wait now (most likely)
        let _c = TcpStream::connect(addr).unwrap();
        match done.recv_timeout(STUCK).expect("accept_timeout returned") {
            Ok(true) => drop(took.try_recv()), // it won the race this time
            Ok(false) => panic!("no stop was requested"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                took.recv_timeout(STUCK).expect("the rival took it");
                lost += 1;
            }
        }
    }
    eprintln!("accept_timeout lost the race {lost} times of 20 and still returned in time");

    // A route channel: the same.
    let (_sup, ch) = route_pair();
    let routed = Listener::from(ch);
    assert!(timed_out(
        routed.accept_timeout(&stop, Duration::from_millis(20))
    ));

    // After a stop: None at once, whatever the timeout.
    stop.request();
    assert!(l.accept_timeout(&stop, STUCK).unwrap().is_none());
    assert!(routed.accept_timeout(&stop, STUCK).unwrap().is_none());
}
