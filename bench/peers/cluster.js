#!/usr/bin/env node
// cluster.js: Node's cluster module running examples/node/hello.js, for bench/peers.sh.
//
//     node cluster.js WORKERS PORT HELLO_JS
//
// The primary forks WORKERS copies of HELLO_JS with PORT as its argument; hello.js, finding no
// inherited socket, calls listen(PORT, '127.0.0.1'), which in a cluster worker goes through
// the primary: with the default scheduling (SCHED_RR) the primary accepts every connection and
// passes it to a worker in turn; with NODE_CLUSTER_SCHED_POLICY=none it hands the listening
// socket to the workers, which accept on it themselves. The worker program is the same file
// multinode, PM2 and the no-supervisor rows run.
//
// A worker that dies unexpectedly is forked again at once. SIGHUP is a rolling restart, one
// worker at a time, written the way Node's documentation shows it (cluster, `worker.disconnect()`):
// fork the replacement, wait for its 'listening', then `disconnect()` the old one (it stops
// accepting and exits once its connections have ended) and `kill()` it (SIGTERM, which
// hello.js answers with its drain) if it has not disconnected after KILL_AFTER_MS (SIGKILL after
// GIVE_UP_MS, so that a reload always ends). It prints `cluster.js: reload done` when every
// worker has been replaced. SIGTERM/SIGINT retire every worker the same way, then it exits.
'use strict';

const cluster = require('node:cluster');

const [workers, port, hello] = process.argv.slice(2);
if (!/^\d+$/.test(workers ?? '') || !/^\d+$/.test(port ?? '') || hello === undefined) {
  console.error('usage: node cluster.js WORKERS PORT HELLO_JS');
  process.exit(2);
}
const KILL_AFTER_MS = 2000; // the timeout of the documentation's example
const GIVE_UP_MS = 10000;

cluster.setupPrimary({ exec: hello, args: [port] });
let stopping = false;
cluster.on('exit', (worker, code, signal) => {
  if (!stopping && !worker.exitedAfterDisconnect) {
    console.error(`cluster.js: worker ${worker.process.pid} died (${signal ?? code}); forking another`);
    cluster.fork();
  }
});
for (let i = 0; i < Number(workers); i++) cluster.fork();

const once = (emitter, event) => new Promise((resolve) => emitter.once(event, resolve));

// Retires a worker the way the documentation shows: disconnect() (it closes its servers, and
// its IPC channel once its connections have ended, and then exits), kill() (SIGTERM) if it is
// still there after KILL_AFTER_MS, SIGKILL after GIVE_UP_MS. Resolves when it has exited.
function retire(worker) {
  const exited = once(worker, 'exit');
  worker.disconnect();
  const term = setTimeout(() => worker.kill(), KILL_AFTER_MS);
  const kill = setTimeout(() => worker.process.kill('SIGKILL'), GIVE_UP_MS);
  return exited.finally(() => {
    clearTimeout(term);
    clearTimeout(kill);
  });
}

async function replace(old) {
  const fresh = cluster.fork();
  await once(fresh, 'listening');
  await retire(old);
}

let reloading = null;
let again = false;
async function reload() {
  do {
    again = false;
    for (const old of Object.values(cluster.workers)) {
      if (stopping) return;
      await replace(old);
    }
    console.log('cluster.js: reload done');
  } while (again && !stopping);
}
process.on('SIGHUP', () => {
  if (reloading !== null) {
    again = true;
    return;
  }
  reloading = reload().finally(() => {
    reloading = null;
  });
});

// Retires every worker and exits once they all have.
function stop() {
  if (stopping) return;
  stopping = true;
  Promise.all(Object.values(cluster.workers).map(retire)).then(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
