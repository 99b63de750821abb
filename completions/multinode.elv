
use builtin;
use str;

set edit:completion:arg-completer[multinode] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'multinode'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'multinode'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Bind the sockets and run the workers until stopped'
            cand check 'Check a configuration (file and options) without starting anything'
            cand status 'Show the workers of a running multinode'
            cand reload 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome'
            cand scale 'Change the number of workers and wait until the new ones are ready'
            cand stop 'Stop gracefully (like SIGTERM) and wait until multinode has exited'
            cand upgrade 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome'
            cand completions 'Print a shell completion script to stdout'
            cand __upgrade-check 'Say whether this multinode can take over a running one''s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1'
            cand __generate 'Write the man pages and completion scripts under DIR (for packagers and the repository)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'multinode;serve'= {
            cand -c 'Read options from this TOML file; options given on the command line win'
            cand --config 'Read options from this TOML file; options given on the command line win'
            cand --name 'Name of this service: picks its control socket [default: the program''s file name]'
            cand --control 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]'
            cand --workdir 'Working directory of the workers [default: multinode''s]'
            cand -e 'Set an environment variable for the workers; repeatable'
            cand --env 'Set an environment variable for the workers; repeatable'
            cand -w 'Number of worker processes [default: the number of CPUs]'
            cand --workers 'Number of worker processes [default: the number of CPUs]'
            cand -l 'Address to listen on; repeat for several sockets, passed in this order'
            cand --listen 'Address to listen on; repeat for several sockets, passed in this order'
            cand --backlog 'Length of each socket''s accept queue (the kernel caps it at net.core.somaxconn)'
            cand -u 'User to run as after binding, when started as root [default: nobody]'
            cand --user 'User to run as after binding, when started as root [default: nobody]'
            cand -g 'Group to run as [default: the user''s primary group]'
            cand --group 'Group to run as [default: the user''s primary group]'
            cand --socket-mode 'Permissions of Unix socket files (octal); their owner is the user multinode runs as'
            cand --balance 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)'
            cand --route 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name'
            cand --proxy-from 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address'
            cand --proxy-timeout 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed'
            cand --restart 'What to do when a worker exits'
            cand --backoff-max 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there'
            cand --min-uptime 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once'
            cand --max-restarts 'Give up (stop everything, exit 6) after more than N restarts within --restart-window'
            cand --restart-window 'The window --max-restarts counts restarts in'
            cand --stop-signal 'Signal that asks a worker to finish its work and exit'
            cand --grace 'How long a stopping worker may take before it is killed (SIGKILL)'
            cand --ready 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)'
            cand --ready-timeout 'A new worker not ready this long is stopped (and a reload rolled back)'
            cand --reload-parallel 'How many workers a rolling reload replaces at once'
            cand --watchdog 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID'
            cand --watchdog-signal 'The signal a hung worker gets first (ABRT: so that it can dump its state)'
            cand --max-memory 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains'
            cand --max-requests 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)'
            cand --max-requests-jitter 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together'
            cand --stop-delay 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first'
            cand --metrics 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker'
            cand --watch 'Reload when this file or directory (recursively) changes; repeatable'
            cand --watch-ignore 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored'
            cand --watch-debounce 'Reload once the watched files have been quiet this long'
            cand --cgroup 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker''s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)'
            cand --color 'Colour the output'
            cand --log-format 'Output format of supervisor events and worker output'
            cand --proxy-protocol 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed'
            cand --allow-new-privileges 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;check'= {
            cand -c 'Read options from this TOML file; options given on the command line win'
            cand --config 'Read options from this TOML file; options given on the command line win'
            cand --name 'Name of this service: picks its control socket [default: the program''s file name]'
            cand --control 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]'
            cand --workdir 'Working directory of the workers [default: multinode''s]'
            cand -e 'Set an environment variable for the workers; repeatable'
            cand --env 'Set an environment variable for the workers; repeatable'
            cand -w 'Number of worker processes [default: the number of CPUs]'
            cand --workers 'Number of worker processes [default: the number of CPUs]'
            cand -l 'Address to listen on; repeat for several sockets, passed in this order'
            cand --listen 'Address to listen on; repeat for several sockets, passed in this order'
            cand --backlog 'Length of each socket''s accept queue (the kernel caps it at net.core.somaxconn)'
            cand -u 'User to run as after binding, when started as root [default: nobody]'
            cand --user 'User to run as after binding, when started as root [default: nobody]'
            cand -g 'Group to run as [default: the user''s primary group]'
            cand --group 'Group to run as [default: the user''s primary group]'
            cand --socket-mode 'Permissions of Unix socket files (octal); their owner is the user multinode runs as'
            cand --balance 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)'
            cand --route 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name'
            cand --proxy-from 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address'
            cand --proxy-timeout 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed'
            cand --restart 'What to do when a worker exits'
            cand --backoff-max 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there'
            cand --min-uptime 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once'
            cand --max-restarts 'Give up (stop everything, exit 6) after more than N restarts within --restart-window'
            cand --restart-window 'The window --max-restarts counts restarts in'
            cand --stop-signal 'Signal that asks a worker to finish its work and exit'
            cand --grace 'How long a stopping worker may take before it is killed (SIGKILL)'
            cand --ready 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)'
            cand --ready-timeout 'A new worker not ready this long is stopped (and a reload rolled back)'
            cand --reload-parallel 'How many workers a rolling reload replaces at once'
            cand --watchdog 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID'
            cand --watchdog-signal 'The signal a hung worker gets first (ABRT: so that it can dump its state)'
            cand --max-memory 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains'
            cand --max-requests 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)'
            cand --max-requests-jitter 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together'
            cand --stop-delay 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first'
            cand --metrics 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker'
            cand --watch 'Reload when this file or directory (recursively) changes; repeatable'
            cand --watch-ignore 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored'
            cand --watch-debounce 'Reload once the watched files have been quiet this long'
            cand --cgroup 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker''s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)'
            cand --color 'Colour the output'
            cand --log-format 'Output format of supervisor events and worker output'
            cand --proxy-protocol 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed'
            cand --allow-new-privileges 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;status'= {
            cand -n 'The --name it was started with [default: the only one running]'
            cand --name 'The --name it was started with [default: the only one running]'
            cand --control 'Its control socket, when started with --control'
            cand --json 'Print JSON, for scripts'
            cand --check 'Print nothing; exit 0 only if every worker slot is ready (a health probe)'
            cand --watch 'Redraw the table every second, like top, until Ctrl-C (the screen is cleared only on a terminal; otherwise one table a second is printed; with --json, one line a second)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;reload'= {
            cand -n 'The --name it was started with [default: the only one running]'
            cand --name 'The --name it was started with [default: the only one running]'
            cand --control 'Its control socket, when started with --control'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;scale'= {
            cand -n 'The --name it was started with [default: the only one running]'
            cand --name 'The --name it was started with [default: the only one running]'
            cand --control 'Its control socket, when started with --control'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;stop'= {
            cand -n 'The --name it was started with [default: the only one running]'
            cand --name 'The --name it was started with [default: the only one running]'
            cand --control 'Its control socket, when started with --control'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;upgrade'= {
            cand -n 'The --name it was started with [default: the only one running]'
            cand --name 'The --name it was started with [default: the only one running]'
            cand --control 'Its control socket, when started with --control'
            cand --binary 'The multinode binary to execute [default: the path multinode was started from]'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;completions'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;__upgrade-check'= {
            cand --state-format 'The state format the running multinode writes'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;__generate'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'multinode;help'= {
            cand serve 'Bind the sockets and run the workers until stopped'
            cand check 'Check a configuration (file and options) without starting anything'
            cand status 'Show the workers of a running multinode'
            cand reload 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome'
            cand scale 'Change the number of workers and wait until the new ones are ready'
            cand stop 'Stop gracefully (like SIGTERM) and wait until multinode has exited'
            cand upgrade 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome'
            cand completions 'Print a shell completion script to stdout'
            cand __upgrade-check 'Say whether this multinode can take over a running one''s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1'
            cand __generate 'Write the man pages and completion scripts under DIR (for packagers and the repository)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'multinode;help;serve'= {
        }
        &'multinode;help;check'= {
        }
        &'multinode;help;status'= {
        }
        &'multinode;help;reload'= {
        }
        &'multinode;help;scale'= {
        }
        &'multinode;help;stop'= {
        }
        &'multinode;help;upgrade'= {
        }
        &'multinode;help;completions'= {
        }
        &'multinode;help;__upgrade-check'= {
        }
        &'multinode;help;__generate'= {
        }
        &'multinode;help;help'= {
        }
    ]
    $completions[$command]
}
