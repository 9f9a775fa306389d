//! The command line: global flags, one file per command, and the one place
//! where errors are printed.
//!
//! stdout carries data only (IDs, tables, JSON). Logs, progress, warnings
//! and errors go to stderr. Errors print once, as `error: ...`, then their
//! causes, then a hint where one is known.

mod check;
mod id;
mod listen;
mod prune;
mod push_peer;
mod receive;
mod tag;
mod transfer_view;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use rimg::progress::{self, Progress};
use rimg::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "rimg",
    version,
    about = "Move container images between machines",
    max_term_width = 100
)]
pub struct Cli {
    /// The image store (an OCI image layout directory).
    /// Default: $RIMG_ROOT, else ~/.local/share/rimg (/var/lib/rimg as root).
    #[arg(long, global = true, value_name = "DIR", env = "RIMG_ROOT")]
    root: Option<PathBuf>,

    /// Print only errors (and the data a command exists to print).
    #[arg(short, long, global = true)]
    quiet: bool,

    /// More log output on stderr: -v for decisions, -vv for detail.
    /// RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// No progress bars or progress lines.
    #[arg(long, global = true)]
    no_progress: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tag an image with another name.
    Tag(tag::Args),
    /// Remove unreachable blobs and leftovers of interrupted writes.
    Prune(prune::Args),
    /// Re-hash every blob and follow every reference; exit 1 on damage.
    Check(check::Args),
    /// Send images to another store, only the layers it lacks (QUIC).
    PushPeer(push_peer::Args),
    /// Receive images from trusted senders.
    Listen(listen::Args),
    /// The remote end of `push-peer [user@]host`, started over ssh.
    Receive(receive::Args),
    /// Print this node's identity fingerprint.
    Id(id::Args),
    /// Manage the senders a listener admits.
    Trust(trust::Args),
}

/// What every command gets: the parsed global flags.
pub struct Context {
    root: PathBuf,
    pub quiet: bool,
    progress: progress::Mode,
}

impl Context {
    /// Opens (creating on first use) the store.
    pub fn store(&self) -> Result<Store> {
        Store::open(&self.root).map_err(|e| {
            anyhow::Error::new(e).context(format!("opening the store at {}", self.root.display()))
        })
    }

    pub fn progress(&self) -> Progress {
        Progress::new(self.progress)
    }

    /// Prints a status line on stderr unless `-q`.
    pub fn status(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

/// An error that has already been reported; only the exit status is left.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub u8);

/// A hint printed after an error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let ctx = Context {
        root: cli.root.clone().unwrap_or_else(rimg::store::default_root),
        quiet: cli.quiet,
        progress: progress::Mode::detect(cli.no_progress || cli.quiet),
    };

    match run(cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn run(command: Command, ctx: &Context) -> Result<()> {
    match command {
        Command::Tag(args) => tag::run(args, ctx),
        Command::Prune(args) => prune::run(args, ctx),
        Command::Check(args) => check::run(args, ctx),
        Command::PushPeer(args) => push_peer::run(args, ctx),
        Command::Listen(args) => listen::run(args, ctx),
        Command::Receive(args) => receive::run(args, ctx),
        Command::Id(args) => id::run(args, ctx),
        Command::Trust(args) => trust::run(args, ctx),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "rimg=debug,info",
        (false, _) => "rimg=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Prints an error once, with its causes and hint, and picks the exit code.
fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(Exit(code)) = error.downcast_ref::<Exit>() {
        return ExitCode::from(*code);
    }
    if is_broken_pipe(error) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {error}");
    let mut hint = None;
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    for cause in error.chain() {
        if let Some(h) = cause.downcast_ref::<Hinted>() {
            hint = Some(h.hint.clone());
        }
    }
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
