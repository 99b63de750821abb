#!/usr/bin/env node
// hello.js: a multinode worker in plain Node.js (node 20 stdlib, no SDK).
//
// Run: cargo build --release --workspace && ./target/release/multinode serve --workers 4 --listen 127.0.0.1:8080 -- node examples/node/hello.js
//
// It serves the sockets multinode passes by the systemd socket-activation
// protocol (fds 3.. with LISTEN_FDS=n and LISTEN_PID=<its pid>) with
// `listen({fd})`, or listens on 127.0.0.1:8080 when run standalone
// (`node examples/node/hello.js [PORT]`). HTTP/1.1 with keep-alive; every
// request gets 200 with the body
//
//     process=<pid>; worker=<MULTINODE_WORKER_ID or ->; reqno=<n>
//
// (n counts this process's requests, as worker.js of the 2010 Yahoo article
// on multi-core Node servers). `/sleep/<ms>` answers after sleeping.
// On SIGTERM/SIGINT it stops accepting, finishes the requests in flight,
// gives idle keep-alive connections 2 s for one last request, and exits.
//
// Node's standard library cannot send to a Unix datagram socket, so it does
// not notify READY=1: multinode counts it ready after its --ready delay.
//
// Under `multinode serve --watchdog D` (or systemd's WatchdogSec=) it sends
// WATCHDOG=1 every D/2 from a timer on its event loop, through
// systemd-notify(1) (see the end of this file). Without a watchdog it runs
// as before.

'use strict';

const { execFile } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');

const LISTEN_FDS_START = 3;
const WORKER = process.env.MULTINODE_WORKER_ID ?? '-';
let reqno = 0;
let stopping = false;
let pinger = null; // the watchdog's timer, if any (see the end of this file)

// The fds passed to this process (sd_listen_fds(3)); the variables are
// removed so child processes do not take them for their own.
function inheritedFds() {
  const { LISTEN_PID: pid, LISTEN_FDS: count } = process.env;
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_FDNAMES;
  if (pid === undefined || count === undefined || Number(pid) !== process.pid) {
    return []; // meant for another process, or not socket-activated
  }
  if (!/^\d+$/.test(count)) {
    console.error(`hello.js: LISTEN_FDS=${JSON.stringify(count)} is not a number`);
    process.exit(1);
  }
  return Array.from({ length: Number(count) }, (_, i) => LISTEN_FDS_START + i);
}

// The watchdog interval in ms that the supervisor asked for, or null:
// WATCHDOG_USEC microseconds, ours when WATCHDOG_PID is unset or our pid
// (sd_watchdog_enabled(3)). Both are removed, as the LISTEN_* ones are.
function watchdogInterval() {
  const { WATCHDOG_USEC: usec, WATCHDOG_PID: pid } = process.env;
  delete process.env.WATCHDOG_USEC;
  delete process.env.WATCHDOG_PID;
  if (usec === undefined) return null;
  if (!/^\d+$/.test(usec) || BigInt(usec) === 0n || BigInt(usec) >= 2n ** 64n - 1n) {
    console.error(`hello.js: WATCHDOG_USEC=${JSON.stringify(usec)} is not a number of microseconds`);
    process.exit(1);
  }
  if (pid !== undefined) {
    if (!/^\d+$/.test(pid) || Number(pid) === 0) {
      console.error(`hello.js: WATCHDOG_PID=${JSON.stringify(pid)} is not a process id`);
      process.exit(1);
    }
    if (Number(pid) !== process.pid) return null; // meant for another process
  }
  return Number(BigInt(usec)) / 1000;
}

function handler(req, res) {
  reqno += 1;
  const n = reqno;
  const answer = () => {
    const body = `process=${process.pid}; worker=${WORKER}; reqno=${n}\n`;
    res.writeHead(200, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      // Draining: no keep-alive, so the connection ends with this response.
      ...(stopping ? { Connection: 'close' } : {}),
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  req.resume(); // read and discard any request body
  const sleep = /^\/sleep\/([^?#]*)/.exec(req.url);
  if (sleep === null) {
    answer();
  } else if (/^\d+$/.test(sleep[1])) {
    setTimeout(answer, Number(sleep[1]));
  } else {
    res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' });
    res.end('bad /sleep/<ms>: <ms> must be a decimal number\n');
  }
}

// Like the Rust hello, answer HTTP/1.1 requests without a Host header too
// (handy with printf | nc); Node 20 rejects them by default.
const options = { requireHostHeader: false };
const fds = inheritedFds();
const WATCHDOG_MS = watchdogInterval();
const servers = [];
if (fds.length > 0) {
  for (const fd of fds) {
    servers.push(http.createServer(options, handler).listen({ fd }));
  }
} else {
  const port = Number(process.argv[2] ?? 8080);
  servers.push(http.createServer(options, handler).listen(port, '127.0.0.1'));
}
for (const server of servers) {
  server.on('error', (e) => {
    console.error(`hello.js: ${e.message}`);
    process.exit(1);
  });
}
console.log(`hello.js: worker ${WORKER} pid ${process.pid} serving ${servers.length} socket(s)`);

// While draining, how long an idle keep-alive connection may take to send one
// more request (a client may have sent it already); it is answered with
// `Connection: close`.
const IDLE_GRACE_MS = 2000;

function stop() {
  // close() stops accepting and waits for open connections; responses sent
  // from now on say `Connection: close`. Connections still idle after the
  // grace are closed. The process exits once the event loop is empty.
  if (stopping) return;
  stopping = true;
  if (pinger !== null) clearInterval(pinger);
  // http.Server#close (Node 19+) also closes idle connections at once; the
  // net.Server one only stops accepting.
  for (const server of servers) net.Server.prototype.close.call(server);
  setTimeout(() => {
    for (const server of servers) server.closeIdleConnections();
  }, IDLE_GRACE_MS).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

// The watchdog. Its pings come from a timer on the event loop, the one
// thread that runs every request handler here: when a handler blocks it (an
// endless loop, a synchronous wait), no timer fires and the pings stop,
// which is what the watchdog is there to notice. A timer that fires is the
// event loop's own proof of life, and it pings only while every server is
// still listening (accepting). A worker thread or a child process pinging on
// its own clock would vouch for nothing.
//
// Node's stdlib cannot send a datagram to a Unix socket, so each ping is one
// run of systemd-notify(1), which sends it for us: multinode credits it to
// this worker (its parent), and systemd-notify waits until the datagram has
// been read (its default since systemd 246), so the credit can be checked. A
// ping still running when the next is due is not doubled.
if (WATCHDOG_MS !== null) {
  let sending = false;
  let warned = false;
  pinger = setInterval(() => {
    if (sending || !servers.every((s) => s.listening)) return;
    sending = true;
    execFile('systemd-notify', ['WATCHDOG=1'], (err) => {
      sending = false;
      if (err && !warned) {
        warned = true;
        console.error(`hello.js: cannot ping the watchdog with systemd-notify: ${err.message}`);
      }
    });
  }, WATCHDOG_MS / 2);
}
