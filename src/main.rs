//! `sipsockd`: SIP listening sockets provisioned as rows of an SQL table, served by a pool of forked
//! worker processes, changed at runtime with one MI command.
//!
//! This binary only parses the command line and dispatches:
//! - `run`: the daemon (supervisor), in the foreground;
//! - `db init|add|rm|list`: provisioning of the sockets table; `db relay add|rm|list`: of the
//!   relays table;
//! - `check`: what a reload would apply;
//! - `mi`: a client of the MI FIFO;
//! - `options`: send one SIP OPTIONS to a UDP socket and print the reply;
//! - `shm-dump`: a read-only view of the shared slot table;
//! - `top`: a live terminal view of the shared slot table (read-only);
//! - `worker` (hidden): a worker process, started by the supervisor with fork + exec.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sipsockd",
    version,
    about = "SIP sockets provisioned from an SQL table"
)]
struct Cli {
    /// Configuration file (default: ./sipsockd.toml when present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines on stderr: text or json (default: `[general] log_format`, else text).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<supervisor::config::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; SIGTERM stops, SIGHUP reloads).
    Run {
        /// Run as this user after start-up (overrides `[general] user`; needs root).
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Run as this group (overrides `[general] group`).
        #[arg(short = 'g', long)]
        group: Option<String>,
        /// First run: create the table when missing and, when it has no row, add the demo socket
        /// (udp:127.0.0.1:5060) and print how to send it an OPTIONS.
        #[arg(long)]
        demo: bool,
        /// The socket `--demo` adds instead of udp:127.0.0.1:5060 (when 5060 is taken).
        #[arg(long, value_name = "SOCKET", requires = "demo")]
        demo_socket: Option<String>,
    },
    /// Provision the sockets table.
    #[command(subcommand)]
    Db(DbCommand),
    /// Read the table once and print what a reload would apply (exit 1 when it is not valid).
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send one MI command to a running daemon through its FIFO.
    Mi(MiArgs),
    /// Send one SIP OPTIONS to a UDP socket and print the reply (exit 0 on a 2xx reply, 1 on
    /// another reply, 2 on none).
    Options {
        /// `udp:host[:port]`, e.g. `udp:127.0.0.1:5060`.
        socket: String,
        /// Seconds to wait for the reply (the request is resent every 500 ms meanwhile).
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Print the shared slot table of a running daemon (read-only); exit status 3 when the
    /// supervisor named in it is gone (a stale file).
    ShmDump {
        /// The shm file (default: `[shm] path` of the configuration).
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a running daemon's shared table: socket and worker rates, states, the last
    /// reload (read-only; q quits, s sorts, / filters).
    Top {
        /// The shm file (default: `[shm] path` of the configuration).
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// A worker process (started by the supervisor, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create the sockets, relays and version tables (idempotent).
    Init,
    /// Add one socket row (validated first; a duplicate identity is refused).
    Add {
        /// `proto:host[:port]`, e.g. `udp:127.0.0.1:5070`.
        socket: String,
        /// Advertised `host[:port]`.
        #[arg(long)]
        advertised: Option<String>,
        /// Tag.
        #[arg(long)]
        tag: Option<String>,
        /// Flags: any of anycast, frag, reuse_port.
        #[arg(long)]
        flags: Option<String>,
        /// TOS: a name (IPTOS_LOWDELAY...) or 0-255.
        #[arg(long)]
        tos: Option<String>,
    },
    /// Remove a socket row, by its socket text or its id.
    Rm {
        /// The socket text (or its identity).
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        socket: Option<String>,
        /// The row id.
        #[arg(long)]
        id: Option<i64>,
    },
    /// List the rows.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Provision the relays table (where requests arriving on sockets of a tag go).
    #[command(subcommand)]
    Relay(RelayCommand),
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Add one relay row (validated first, against the sockets table too).
    Add {
        /// The socket tag it serves.
        tag: String,
        /// `sip:host[:port][;transport=udp|tcp|tls]` or `sips:host[:port]`.
        destination: String,
        /// The socket to send from, in the sockets table's syntax (default: chosen per request).
        #[arg(long)]
        socket: Option<String>,
        /// Weight among the tag's destinations, 1-65535 (default 1).
        #[arg(long)]
        weight: Option<String>,
        /// Do not verify the TLS destination's certificate (lab use only).
        #[arg(long)]
        insecure: bool,
    },
    /// Remove a relay row by its id.
    Rm {
        /// The row id.
        #[arg(long)]
        id: i64,
    },
    /// List the relay rows.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct MiArgs {
    /// Server FIFO (default: `[mi_fifo] fifo_name`).
    #[arg(long)]
    fifo: Option<PathBuf>,
    /// Directory for the reply FIFO (default: `[mi_fifo] reply_dir`).
    #[arg(long)]
    reply_dir: Option<PathBuf>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// MI method, e.g. `sockets_reload`.
    method: String,
    /// Parameters as NAME=VALUE.
    params: Vec<String>,
}

#[derive(Args)]
struct WorkerArgs {
    /// Pool: `udp` (or `stream`).
    #[arg(long)]
    kind: String,
    /// Rank in the pool.
    #[arg(long)]
    rank: u32,
    /// Inherited fd of the control socket.
    #[arg(long)]
    control_fd: i32,
    /// Pid of the supervisor that started this worker.
    #[arg(long)]
    parent: i32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipsockd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Command::Worker(w) = cli.command {
        // The supervisor passes everything the worker needs; the worker reads no config file.
        supervisor::logging::init(supervisor::logging::inherited_format());
        let code = worker::run(worker::WorkerArgs {
            kind: w.kind.parse()?,
            rank: w.rank,
            control_fd: w.control_fd,
            parent: w.parent,
        })?;
        return Ok(ExitCode::from(code));
    }
    let mut config = supervisor::config::load(cli.config.as_deref())?;
    supervisor::logging::init(cli.log_format.unwrap_or(config.general.log_format));
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Run {
            user,
            group,
            demo,
            demo_socket,
        } => {
            config.general.user = user.or(config.general.user);
            config.general.group = group.or(config.general.group);
            if demo {
                let socket = demo_socket
                    .as_deref()
                    .unwrap_or(supervisor::commands::DEMO_SOCKET);
                let program = supervisor::commands::invocation(cli.config.as_deref());
                supervisor::commands::demo(&config, socket, &program, &mut out)?;
                out.flush()?;
            }
            drop(out);
            supervisor::daemon::run(config)?
        }
        Command::Db(DbCommand::Init) => supervisor::commands::db_init(&config, &mut out)?,
        Command::Db(DbCommand::Add {
            socket,
            advertised,
            tag,
            flags,
            tos,
        }) => {
            let row = supervisor::row::RawRow {
                id: None,
                socket: Some(socket),
                advertised,
                tag,
                flags,
                tos,
            };
            supervisor::commands::db_add(&config, &row, &mut out)?
        }
        Command::Db(DbCommand::Rm { socket, id }) => {
            let target = match (socket, id) {
                (_, Some(id)) => supervisor::commands::RmTarget::Id(id),
                (Some(s), None) => supervisor::commands::RmTarget::Socket(s),
                (None, None) => unreachable!("clap requires one of them"),
            };
            supervisor::commands::db_rm(&config, &target, &mut out)?
        }
        Command::Db(DbCommand::List { json }) => {
            supervisor::commands::db_list(&config, json, &mut out)?
        }
        Command::Db(DbCommand::Relay(RelayCommand::Add {
            tag,
            destination,
            socket,
            weight,
            insecure,
        })) => {
            let row = supervisor::relay::RawRelayRow {
                id: None,
                tag: Some(tag),
                destination: Some(destination),
                socket,
                weight,
                flags: insecure.then(|| "insecure".to_string()),
            };
            supervisor::commands::relay_add(&config, &row, &mut out)?
        }
        Command::Db(DbCommand::Relay(RelayCommand::Rm { id })) => {
            supervisor::commands::relay_rm(&config, id, &mut out)?
        }
        Command::Db(DbCommand::Relay(RelayCommand::List { json })) => {
            supervisor::commands::relay_list(&config, json, &mut out)?
        }
        Command::Check { json } => {
            if !supervisor::commands::check(&config, json, &mut out)? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Mi(m) => {
            let fifo = m.fifo.unwrap_or(config.mi_fifo.fifo_name.clone());
            let reply_dir = m.reply_dir.unwrap_or(config.mi_fifo.reply_dir.clone());
            let timeout = std::time::Duration::from_secs_f64(m.timeout.max(0.001));
            return Ok(ExitCode::from(supervisor::mi::client::run(
                &fifo, &reply_dir, &m.method, &m.params, timeout, &mut out,
            )));
        }
        Command::Options { socket, timeout } => {
            // NaN falls back to the default.
            let timeout = std::time::Duration::try_from_secs_f64(timeout.clamp(0.001, 3600.0))
                .unwrap_or(std::time::Duration::from_secs(5));
            return Ok(
                match supervisor::commands::options(&socket, timeout, &mut out)? {
                    supervisor::commands::OptionsOutcome::Success => ExitCode::SUCCESS,
                    supervisor::commands::OptionsOutcome::OtherReply => ExitCode::from(1),
                    supervisor::commands::OptionsOutcome::NoReply => {
                        eprintln!("sipsockd: options {socket}: no reply within {timeout:?}");
                        ExitCode::from(2)
                    }
                },
            );
        }
        Command::ShmDump { path, json } => {
            let path = path.unwrap_or(config.shm.path.clone());
            if shm::dump(&path, json, &mut out)?.stale {
                // The supervisor named in the file is gone: what it shows is not running.
                return Ok(ExitCode::from(3));
            }
        }
        Command::Top { path, interval } => {
            let path = path.unwrap_or(config.shm.path.clone());
            // NaN and nonsense fall back to the default.
            let interval = std::time::Duration::try_from_secs_f64(interval.clamp(0.1, 3600.0))
                .unwrap_or(std::time::Duration::from_secs(1));
            supervisor::top::run(&path, interval)?
        }
        Command::Worker(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
