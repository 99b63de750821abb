# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_multinode_global_optspecs
    string join \n h/help V/version
end

function __fish_multinode_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_multinode_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_multinode_using_subcommand
    set -l cmd (__fish_multinode_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c multinode -n "__fish_multinode_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c multinode -n "__fish_multinode_needs_command" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "serve" -d 'Bind the sockets and run the workers until stopped'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "check" -d 'Check a configuration (file and options) without starting anything'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "status" -d 'Show the workers of a running multinode'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "reload" -d 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "scale" -d 'Change the number of workers and wait until the new ones are ready'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "stop" -d 'Stop gracefully (like SIGTERM) and wait until multinode has exited'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "upgrade" -d 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "__upgrade-check" -d 'Say whether this multinode can take over a running one\'s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "__generate" -d 'Write the man pages and completion scripts under DIR (for packagers and the repository)'
complete -c multinode -n "__fish_multinode_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s c -l config -d 'Read options from this TOML file; options given on the command line win' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l name -d 'Name of this service: picks its control socket [default: the program\'s file name]' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l control -d 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l workdir -d 'Working directory of the workers [default: multinode\'s]' -r -f -a "(__fish_complete_directories)"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s e -l env -d 'Set an environment variable for the workers; repeatable' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s w -l workers -d 'Number of worker processes [default: the number of CPUs]' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s l -l listen -d 'Address to listen on; repeat for several sockets, passed in this order' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l backlog -d 'Length of each socket\'s accept queue (the kernel caps it at net.core.somaxconn)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s u -l user -d 'User to run as after binding, when started as root [default: nobody]' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s g -l group -d 'Group to run as [default: the user\'s primary group]' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l socket-mode -d 'Permissions of Unix socket files (octal); their owner is the user multinode runs as' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l balance -d 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)' -r -f -a "shared\t'All workers accept on the same sockets'
reuseport\t'One SO_REUSEPORT socket per worker slot'"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l route -d 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name' -r -f -a "ip-hash\t'The same client address always goes to the same slot (rendezvous hashing)'
round-robin\t'Each worker in turn'
least-conn\t'The worker holding the fewest open routed connections'"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l proxy-from -d 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l proxy-timeout -d 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l restart -d 'What to do when a worker exits' -r -f -a "always\t'Restart a worker whatever way it exited'
on-failure\t'Restart a worker unless it exited with status 0'
never\t'Never restart; multinode exits when the last worker has'"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l backoff-max -d 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l min-uptime -d 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l max-restarts -d 'Give up (stop everything, exit 6) after more than N restarts within --restart-window' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l restart-window -d 'The window --max-restarts counts restarts in' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l stop-signal -d 'Signal that asks a worker to finish its work and exit' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l grace -d 'How long a stopping worker may take before it is killed (SIGKILL)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l ready -d 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l ready-timeout -d 'A new worker not ready this long is stopped (and a reload rolled back)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l reload-parallel -d 'How many workers a rolling reload replaces at once' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l watchdog -d 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l watchdog-signal -d 'The signal a hung worker gets first (ABRT: so that it can dump its state)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l max-memory -d 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l max-requests -d 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l max-requests-jitter -d 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l stop-delay -d 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l metrics -d 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l watch -d 'Reload when this file or directory (recursively) changes; repeatable' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l watch-ignore -d 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l watch-debounce -d 'Reload once the watched files have been quiet this long' -r
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l cgroup -d 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker\'s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)' -r -f -a "auto\t'Per-worker cgroups where the hierarchy allows, else process groups'
required\t'Per-worker cgroups, or refuse to start'
off\t'Process groups only'"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l color -d 'Colour the output' -r -f -a "auto\t'Colour when the output is a terminal and NO_COLOR is not set'
always\t''
never\t''"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l log-format -d 'Output format of supervisor events and worker output' -r -f -a "text\t'Prefixed lines: `worker.2[1234] | text` and `multinode | event`'
json\t'One JSON object per line, for log collectors'"
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l proxy-protocol -d 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed'
complete -c multinode -n "__fish_multinode_using_subcommand serve" -l allow-new-privileges -d 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker'
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c multinode -n "__fish_multinode_using_subcommand serve" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand check" -s c -l config -d 'Read options from this TOML file; options given on the command line win' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand check" -l name -d 'Name of this service: picks its control socket [default: the program\'s file name]' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l control -d 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand check" -l workdir -d 'Working directory of the workers [default: multinode\'s]' -r -f -a "(__fish_complete_directories)"
complete -c multinode -n "__fish_multinode_using_subcommand check" -s e -l env -d 'Set an environment variable for the workers; repeatable' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -s w -l workers -d 'Number of worker processes [default: the number of CPUs]' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -s l -l listen -d 'Address to listen on; repeat for several sockets, passed in this order' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l backlog -d 'Length of each socket\'s accept queue (the kernel caps it at net.core.somaxconn)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -s u -l user -d 'User to run as after binding, when started as root [default: nobody]' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -s g -l group -d 'Group to run as [default: the user\'s primary group]' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l socket-mode -d 'Permissions of Unix socket files (octal); their owner is the user multinode runs as' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l balance -d 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)' -r -f -a "shared\t'All workers accept on the same sockets'
reuseport\t'One SO_REUSEPORT socket per worker slot'"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l route -d 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name' -r -f -a "ip-hash\t'The same client address always goes to the same slot (rendezvous hashing)'
round-robin\t'Each worker in turn'
least-conn\t'The worker holding the fewest open routed connections'"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l proxy-from -d 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l proxy-timeout -d 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l restart -d 'What to do when a worker exits' -r -f -a "always\t'Restart a worker whatever way it exited'
on-failure\t'Restart a worker unless it exited with status 0'
never\t'Never restart; multinode exits when the last worker has'"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l backoff-max -d 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l min-uptime -d 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l max-restarts -d 'Give up (stop everything, exit 6) after more than N restarts within --restart-window' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l restart-window -d 'The window --max-restarts counts restarts in' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l stop-signal -d 'Signal that asks a worker to finish its work and exit' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l grace -d 'How long a stopping worker may take before it is killed (SIGKILL)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l ready -d 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l ready-timeout -d 'A new worker not ready this long is stopped (and a reload rolled back)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l reload-parallel -d 'How many workers a rolling reload replaces at once' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l watchdog -d 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l watchdog-signal -d 'The signal a hung worker gets first (ABRT: so that it can dump its state)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l max-memory -d 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l max-requests -d 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l max-requests-jitter -d 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l stop-delay -d 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l metrics -d 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l watch -d 'Reload when this file or directory (recursively) changes; repeatable' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand check" -l watch-ignore -d 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l watch-debounce -d 'Reload once the watched files have been quiet this long' -r
complete -c multinode -n "__fish_multinode_using_subcommand check" -l cgroup -d 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker\'s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)' -r -f -a "auto\t'Per-worker cgroups where the hierarchy allows, else process groups'
required\t'Per-worker cgroups, or refuse to start'
off\t'Process groups only'"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l color -d 'Colour the output' -r -f -a "auto\t'Colour when the output is a terminal and NO_COLOR is not set'
always\t''
never\t''"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l log-format -d 'Output format of supervisor events and worker output' -r -f -a "text\t'Prefixed lines: `worker.2[1234] | text` and `multinode | event`'
json\t'One JSON object per line, for log collectors'"
complete -c multinode -n "__fish_multinode_using_subcommand check" -l proxy-protocol -d 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed'
complete -c multinode -n "__fish_multinode_using_subcommand check" -l allow-new-privileges -d 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker'
complete -c multinode -n "__fish_multinode_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c multinode -n "__fish_multinode_using_subcommand check" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand status" -s n -l name -d 'The --name it was started with [default: the only one running]' -r
complete -c multinode -n "__fish_multinode_using_subcommand status" -l control -d 'Its control socket, when started with --control' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand status" -l json -d 'Print JSON, for scripts'
complete -c multinode -n "__fish_multinode_using_subcommand status" -l check -d 'Print nothing; exit 0 only if every worker slot is ready (a health probe)'
complete -c multinode -n "__fish_multinode_using_subcommand status" -l watch -d 'Redraw the table every second, like top, until Ctrl-C (the screen is cleared only on a terminal; otherwise one table a second is printed; with --json, one line a second)'
complete -c multinode -n "__fish_multinode_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c multinode -n "__fish_multinode_using_subcommand status" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand reload" -s n -l name -d 'The --name it was started with [default: the only one running]' -r
complete -c multinode -n "__fish_multinode_using_subcommand reload" -l control -d 'Its control socket, when started with --control' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand reload" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand reload" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand scale" -s n -l name -d 'The --name it was started with [default: the only one running]' -r
complete -c multinode -n "__fish_multinode_using_subcommand scale" -l control -d 'Its control socket, when started with --control' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand scale" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand scale" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand stop" -s n -l name -d 'The --name it was started with [default: the only one running]' -r
complete -c multinode -n "__fish_multinode_using_subcommand stop" -l control -d 'Its control socket, when started with --control' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand stop" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand stop" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand upgrade" -s n -l name -d 'The --name it was started with [default: the only one running]' -r
complete -c multinode -n "__fish_multinode_using_subcommand upgrade" -l control -d 'Its control socket, when started with --control' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand upgrade" -l binary -d 'The multinode binary to execute [default: the path multinode was started from]' -r -F
complete -c multinode -n "__fish_multinode_using_subcommand upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c multinode -n "__fish_multinode_using_subcommand upgrade" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand completions" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand completions" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand __upgrade-check" -l state-format -d 'The state format the running multinode writes' -r
complete -c multinode -n "__fish_multinode_using_subcommand __upgrade-check" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand __upgrade-check" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand __generate" -s h -l help -d 'Print help'
complete -c multinode -n "__fish_multinode_using_subcommand __generate" -s V -l version -d 'Print version'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "serve" -d 'Bind the sockets and run the workers until stopped'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "check" -d 'Check a configuration (file and options) without starting anything'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "status" -d 'Show the workers of a running multinode'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "reload" -d 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "scale" -d 'Change the number of workers and wait until the new ones are ready'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "stop" -d 'Stop gracefully (like SIGTERM) and wait until multinode has exited'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "upgrade" -d 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "__upgrade-check" -d 'Say whether this multinode can take over a running one\'s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "__generate" -d 'Write the man pages and completion scripts under DIR (for packagers and the repository)'
complete -c multinode -n "__fish_multinode_using_subcommand help; and not __fish_seen_subcommand_from serve check status reload scale stop upgrade completions __upgrade-check __generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
