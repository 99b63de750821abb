//! Test worker that ignores the sockets multinode passes and binds its own port, as a
//! program not written for socket activation does: `mn-selfbind` listens on 127.0.0.1:0 and
//! sleeps until killed.

use std::net::TcpListener;

fn main() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    println!("mn-selfbind listening on {}", l.local_addr().unwrap());
    loop {
        std::thread::park();
    }
}
