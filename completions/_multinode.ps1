
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'multinode' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'multinode'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'multinode' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Bind the sockets and run the workers until stopped')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Check a configuration (file and options) without starting anything')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show the workers of a running multinode')
            [CompletionResult]::new('reload', 'reload', [CompletionResultType]::ParameterValue, 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome')
            [CompletionResult]::new('scale', 'scale', [CompletionResultType]::ParameterValue, 'Change the number of workers and wait until the new ones are ready')
            [CompletionResult]::new('stop', 'stop', [CompletionResultType]::ParameterValue, 'Stop gracefully (like SIGTERM) and wait until multinode has exited')
            [CompletionResult]::new('upgrade', 'upgrade', [CompletionResultType]::ParameterValue, 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('__upgrade-check', '__upgrade-check', [CompletionResultType]::ParameterValue, 'Say whether this multinode can take over a running one''s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1')
            [CompletionResult]::new('__generate', '__generate', [CompletionResultType]::ParameterValue, 'Write the man pages and completion scripts under DIR (for packagers and the repository)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'multinode;serve' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Read options from this TOML file; options given on the command line win')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Read options from this TOML file; options given on the command line win')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Name of this service: picks its control socket [default: the program''s file name]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]')
            [CompletionResult]::new('--workdir', '--workdir', [CompletionResultType]::ParameterName, 'Working directory of the workers [default: multinode''s]')
            [CompletionResult]::new('-e', '-e', [CompletionResultType]::ParameterName, 'Set an environment variable for the workers; repeatable')
            [CompletionResult]::new('--env', '--env', [CompletionResultType]::ParameterName, 'Set an environment variable for the workers; repeatable')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Number of worker processes [default: the number of CPUs]')
            [CompletionResult]::new('--workers', '--workers', [CompletionResultType]::ParameterName, 'Number of worker processes [default: the number of CPUs]')
            [CompletionResult]::new('-l', '-l', [CompletionResultType]::ParameterName, 'Address to listen on; repeat for several sockets, passed in this order')
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on; repeat for several sockets, passed in this order')
            [CompletionResult]::new('--backlog', '--backlog', [CompletionResultType]::ParameterName, 'Length of each socket''s accept queue (the kernel caps it at net.core.somaxconn)')
            [CompletionResult]::new('-u', '-u', [CompletionResultType]::ParameterName, 'User to run as after binding, when started as root [default: nobody]')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'User to run as after binding, when started as root [default: nobody]')
            [CompletionResult]::new('-g', '-g', [CompletionResultType]::ParameterName, 'Group to run as [default: the user''s primary group]')
            [CompletionResult]::new('--group', '--group', [CompletionResultType]::ParameterName, 'Group to run as [default: the user''s primary group]')
            [CompletionResult]::new('--socket-mode', '--socket-mode', [CompletionResultType]::ParameterName, 'Permissions of Unix socket files (octal); their owner is the user multinode runs as')
            [CompletionResult]::new('--balance', '--balance', [CompletionResultType]::ParameterName, 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)')
            [CompletionResult]::new('--route', '--route', [CompletionResultType]::ParameterName, 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name')
            [CompletionResult]::new('--proxy-from', '--proxy-from', [CompletionResultType]::ParameterName, 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address')
            [CompletionResult]::new('--proxy-timeout', '--proxy-timeout', [CompletionResultType]::ParameterName, 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed')
            [CompletionResult]::new('--restart', '--restart', [CompletionResultType]::ParameterName, 'What to do when a worker exits')
            [CompletionResult]::new('--backoff-max', '--backoff-max', [CompletionResultType]::ParameterName, 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there')
            [CompletionResult]::new('--min-uptime', '--min-uptime', [CompletionResultType]::ParameterName, 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once')
            [CompletionResult]::new('--max-restarts', '--max-restarts', [CompletionResultType]::ParameterName, 'Give up (stop everything, exit 6) after more than N restarts within --restart-window')
            [CompletionResult]::new('--restart-window', '--restart-window', [CompletionResultType]::ParameterName, 'The window --max-restarts counts restarts in')
            [CompletionResult]::new('--stop-signal', '--stop-signal', [CompletionResultType]::ParameterName, 'Signal that asks a worker to finish its work and exit')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'How long a stopping worker may take before it is killed (SIGKILL)')
            [CompletionResult]::new('--ready', '--ready', [CompletionResultType]::ParameterName, 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)')
            [CompletionResult]::new('--ready-timeout', '--ready-timeout', [CompletionResultType]::ParameterName, 'A new worker not ready this long is stopped (and a reload rolled back)')
            [CompletionResult]::new('--reload-parallel', '--reload-parallel', [CompletionResultType]::ParameterName, 'How many workers a rolling reload replaces at once')
            [CompletionResult]::new('--watchdog', '--watchdog', [CompletionResultType]::ParameterName, 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID')
            [CompletionResult]::new('--watchdog-signal', '--watchdog-signal', [CompletionResultType]::ParameterName, 'The signal a hung worker gets first (ABRT: so that it can dump its state)')
            [CompletionResult]::new('--max-memory', '--max-memory', [CompletionResultType]::ParameterName, 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains')
            [CompletionResult]::new('--max-requests', '--max-requests', [CompletionResultType]::ParameterName, 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)')
            [CompletionResult]::new('--max-requests-jitter', '--max-requests-jitter', [CompletionResultType]::ParameterName, 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together')
            [CompletionResult]::new('--stop-delay', '--stop-delay', [CompletionResultType]::ParameterName, 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first')
            [CompletionResult]::new('--metrics', '--metrics', [CompletionResultType]::ParameterName, 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Reload when this file or directory (recursively) changes; repeatable')
            [CompletionResult]::new('--watch-ignore', '--watch-ignore', [CompletionResultType]::ParameterName, 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored')
            [CompletionResult]::new('--watch-debounce', '--watch-debounce', [CompletionResultType]::ParameterName, 'Reload once the watched files have been quiet this long')
            [CompletionResult]::new('--cgroup', '--cgroup', [CompletionResultType]::ParameterName, 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker''s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Colour the output')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Output format of supervisor events and worker output')
            [CompletionResult]::new('--proxy-protocol', '--proxy-protocol', [CompletionResultType]::ParameterName, 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed')
            [CompletionResult]::new('--allow-new-privileges', '--allow-new-privileges', [CompletionResultType]::ParameterName, 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;check' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Read options from this TOML file; options given on the command line win')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Read options from this TOML file; options given on the command line win')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Name of this service: picks its control socket [default: the program''s file name]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Path of the control socket [default: /run/multinode/NAME/control.sock as root, else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock without XDG_RUNTIME_DIR]')
            [CompletionResult]::new('--workdir', '--workdir', [CompletionResultType]::ParameterName, 'Working directory of the workers [default: multinode''s]')
            [CompletionResult]::new('-e', '-e', [CompletionResultType]::ParameterName, 'Set an environment variable for the workers; repeatable')
            [CompletionResult]::new('--env', '--env', [CompletionResultType]::ParameterName, 'Set an environment variable for the workers; repeatable')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Number of worker processes [default: the number of CPUs]')
            [CompletionResult]::new('--workers', '--workers', [CompletionResultType]::ParameterName, 'Number of worker processes [default: the number of CPUs]')
            [CompletionResult]::new('-l', '-l', [CompletionResultType]::ParameterName, 'Address to listen on; repeat for several sockets, passed in this order')
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on; repeat for several sockets, passed in this order')
            [CompletionResult]::new('--backlog', '--backlog', [CompletionResultType]::ParameterName, 'Length of each socket''s accept queue (the kernel caps it at net.core.somaxconn)')
            [CompletionResult]::new('-u', '-u', [CompletionResultType]::ParameterName, 'User to run as after binding, when started as root [default: nobody]')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'User to run as after binding, when started as root [default: nobody]')
            [CompletionResult]::new('-g', '-g', [CompletionResultType]::ParameterName, 'Group to run as [default: the user''s primary group]')
            [CompletionResult]::new('--group', '--group', [CompletionResultType]::ParameterName, 'Group to run as [default: the user''s primary group]')
            [CompletionResult]::new('--socket-mode', '--socket-mode', [CompletionResultType]::ParameterName, 'Permissions of Unix socket files (octal); their owner is the user multinode runs as')
            [CompletionResult]::new('--balance', '--balance', [CompletionResultType]::ParameterName, 'How connections reach workers when not routed: `shared` (every worker accepts on the same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker slot, kept by multinode across restarts and reloads of that slot)')
            [CompletionResult]::new('--route', '--route', [CompletionResultType]::ParameterName, 'Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented wire format); the channel replaces each listening socket at its fd, under its name')
            [CompletionResult]::new('--proxy-from', '--proxy-from', [CompletionResultType]::ParameterName, 'With --proxy-protocol: believe PROXY headers only from this network or address (your load balancers); repeatable. A connection from anywhere else is closed before a byte is read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any client can claim any address')
            [CompletionResult]::new('--proxy-timeout', '--proxy-timeout', [CompletionResultType]::ParameterName, 'With --proxy-protocol: how long a connection may take to send its PROXY header before it is closed')
            [CompletionResult]::new('--restart', '--restart', [CompletionResultType]::ParameterName, 'What to do when a worker exits')
            [CompletionResult]::new('--backoff-max', '--backoff-max', [CompletionResultType]::ParameterName, 'Longest wait between restarts of a crashing worker: a first crash restarts at once, a second one within --min-uptime after 100ms, and the wait doubles from there')
            [CompletionResult]::new('--min-uptime', '--min-uptime', [CompletionResultType]::ParameterName, 'A worker that stayed up this long counts as healthy: its crash counts as a first one and restarts at once')
            [CompletionResult]::new('--max-restarts', '--max-restarts', [CompletionResultType]::ParameterName, 'Give up (stop everything, exit 6) after more than N restarts within --restart-window')
            [CompletionResult]::new('--restart-window', '--restart-window', [CompletionResultType]::ParameterName, 'The window --max-restarts counts restarts in')
            [CompletionResult]::new('--stop-signal', '--stop-signal', [CompletionResultType]::ParameterName, 'Signal that asks a worker to finish its work and exit')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'How long a stopping worker may take before it is killed (SIGKILL)')
            [CompletionResult]::new('--ready', '--ready', [CompletionResultType]::ParameterName, 'When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or `delay:DURATION` (it sent READY=1, or stayed up that long)')
            [CompletionResult]::new('--ready-timeout', '--ready-timeout', [CompletionResultType]::ParameterName, 'A new worker not ready this long is stopped (and a reload rolled back)')
            [CompletionResult]::new('--reload-parallel', '--reload-parallel', [CompletionResultType]::ParameterName, 'How many workers a rolling reload replaces at once')
            [CompletionResult]::new('--watchdog', '--watchdog', [CompletionResultType]::ParameterName, 'Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID')
            [CompletionResult]::new('--watchdog-signal', '--watchdog-signal', [CompletionResultType]::ParameterName, 'The signal a hung worker gets first (ABRT: so that it can dump its state)')
            [CompletionResult]::new('--max-memory', '--max-memory', [CompletionResultType]::ParameterName, 'Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024): a replacement is started and ready before it drains')
            [CompletionResult]::new('--max-requests', '--max-requests', [CompletionResultType]::ParameterName, 'With --route: recycle a worker once it was handed N connections (a replacement is started and ready before it drains)')
            [CompletionResult]::new('--max-requests-jitter', '--max-requests-jitter', [CompletionResultType]::ParameterName, 'Adds a random 0..=N to --max-requests for each worker, so workers do not recycle together')
            [CompletionResult]::new('--stop-delay', '--stop-delay', [CompletionResultType]::ParameterName, 'On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving this long before the drain starts, so that load balancers stop sending first')
            [CompletionResult]::new('--metrics', '--metrics', [CompletionResultType]::ParameterName, 'Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like the --listen ones). Served by multinode itself, never by a worker')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Reload when this file or directory (recursively) changes; repeatable')
            [CompletionResult]::new('--watch-ignore', '--watch-ignore', [CompletionResultType]::ParameterName, 'Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable. `**/.git/**` and `**/target/**` are always ignored')
            [CompletionResult]::new('--watch-debounce', '--watch-debounce', [CompletionResultType]::ParameterName, 'Reload once the watched files have been quiet this long')
            [CompletionResult]::new('--cgroup', '--cgroup', [CompletionResultType]::ParameterName, 'Contain each worker, and everything it starts however it detaches, in a cgroup v2 group of its own, killed whole when the worker''s slot ends: `auto` (where a writable cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where not), `off` (process groups only)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Colour the output')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Output format of supervisor events and worker output')
            [CompletionResult]::new('--proxy-protocol', '--proxy-protocol', [CompletionResultType]::ParameterName, 'With --route: read a PROXY protocol header (v1 or v2) first on every connection and route by the client address it names; connections without a valid one are closed')
            [CompletionResult]::new('--allow-new-privileges', '--allow-new-privileges', [CompletionResultType]::ParameterName, 'Let workers gain privileges through exec (setuid programs, file capabilities). By default multinode sets no_new_privs and empties the capability bounding set, for itself and so for every worker')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;status' {
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Its control socket, when started with --control')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON, for scripts')
            [CompletionResult]::new('--check', '--check', [CompletionResultType]::ParameterName, 'Print nothing; exit 0 only if every worker slot is ready (a health probe)')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Redraw the table every second, like top, until Ctrl-C (the screen is cleared only on a terminal; otherwise one table a second is printed; with --json, one line a second)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;reload' {
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Its control socket, when started with --control')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;scale' {
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Its control socket, when started with --control')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;stop' {
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Its control socket, when started with --control')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;upgrade' {
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'The --name it was started with [default: the only one running]')
            [CompletionResult]::new('--control', '--control', [CompletionResultType]::ParameterName, 'Its control socket, when started with --control')
            [CompletionResult]::new('--binary', '--binary', [CompletionResultType]::ParameterName, 'The multinode binary to execute [default: the path multinode was started from]')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;completions' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;__upgrade-check' {
            [CompletionResult]::new('--state-format', '--state-format', [CompletionResultType]::ParameterName, 'The state format the running multinode writes')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;__generate' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'multinode;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Bind the sockets and run the workers until stopped')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Check a configuration (file and options) without starting anything')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show the workers of a running multinode')
            [CompletionResult]::new('reload', 'reload', [CompletionResultType]::ParameterValue, 'Roll every worker over to a new one (like SIGHUP) and wait for the outcome')
            [CompletionResult]::new('scale', 'scale', [CompletionResultType]::ParameterValue, 'Change the number of workers and wait until the new ones are ready')
            [CompletionResult]::new('stop', 'stop', [CompletionResultType]::ParameterValue, 'Stop gracefully (like SIGTERM) and wait until multinode has exited')
            [CompletionResult]::new('upgrade', 'upgrade', [CompletionResultType]::ParameterValue, 'Upgrade multinode in place (like SIGUSR2) and wait for the outcome')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('__upgrade-check', '__upgrade-check', [CompletionResultType]::ParameterValue, 'Say whether this multinode can take over a running one''s state of format N (asked by `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1')
            [CompletionResult]::new('__generate', '__generate', [CompletionResultType]::ParameterValue, 'Write the man pages and completion scripts under DIR (for packagers and the repository)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'multinode;help;serve' {
            break
        }
        'multinode;help;check' {
            break
        }
        'multinode;help;status' {
            break
        }
        'multinode;help;reload' {
            break
        }
        'multinode;help;scale' {
            break
        }
        'multinode;help;stop' {
            break
        }
        'multinode;help;upgrade' {
            break
        }
        'multinode;help;completions' {
            break
        }
        'multinode;help;__upgrade-check' {
            break
        }
        'multinode;help;__generate' {
            break
        }
        'multinode;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
