//! The command line: global flags, one file per command, and the one place
//! where errors are printed.
//!
//! stdout carries data only (IDs, tables, JSON). Logs, progress, warnings
//! and errors go to stderr. Errors print once, as `error: ...`, then their
//! causes, then a hint where one is known.

mod check;
mod history;
mod id;
mod images;
mod import;
mod inspect;
mod into;
mod listen;
mod load;
mod prune;
mod push_peer;
mod receive;
mod rmi;
mod save;
mod table;
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

    /// Identity and trust directory (id, trust, listen, push-peer).
    /// Default: $RIMG_CONFIG, else ~/.config/rimg (/etc/rimg as root).
    #[arg(long, global = true, value_name = "DIR", env = "RIMG_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import a rootfs tarball (file, URL or -) as a one-layer image.
    Import(import::Args),
    /// List images.
    Images(images::Args),
    /// Show the history of an image.
    History(history::Args),
    /// Show details of images as JSON.
    Inspect(inspect::Args),
    /// Tag an image with another name.
    Tag(tag::Args),
    /// Untag images; delete those no name refers to any more.
    Rmi(rmi::Args),
    /// Remove unreachable blobs and leftovers of interrupted writes.
    Prune(prune::Args),
    /// Re-hash every blob and follow every reference; exit 1 on damage.
    Check(check::Args),
    /// Load images from an archive (file or stdin), as `docker load`.
    Load(load::Args),
    /// Save images to one archive (file or stdout), as `docker save`.
    Save(save::Args),
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
    /// Manage images (the same commands, grouped as `docker image`).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `rimg image ...`, as `docker image ...`.
#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// List images.
    #[command(visible_alias = "list")]
    Ls(images::Args),
    /// Untag images; delete those no name refers to any more.
    #[command(visible_alias = "remove")]
    Rm(rmi::Args),
    /// Show details of images as JSON.
    Inspect(inspect::Args),
    /// Show the history of an image.
    History(history::Args),
    /// Tag an image with another name.
    Tag(tag::Args),
    /// Import a rootfs tarball (file, URL or -) as a one-layer image.
    Import(import::Args),
    /// Remove unreachable blobs and leftovers of interrupted writes.
    Prune(prune::Args),
    /// Load images from an archive (file or stdin), as `docker image load`.
    Load(load::Args),
    /// Save images to one archive (file or stdout), as `docker image save`.
    Save(save::Args),
}

/// What every command gets: the parsed global flags.
pub struct Context {
    root: PathBuf,
    config: Option<PathBuf>,
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

    /// The identity and trust directory.
    pub fn config_dir(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(rimg::transfer::identity::default_config_dir)
    }

    /// Prints a status line on stderr unless `-q`.
    pub fn status(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

/// Connects to the local Docker Engine, turning a failure into an error
/// with the engine's message and a hint.
pub fn connect_engine() -> Result<rimg::engine::Engine> {
    rimg::engine::Engine::connect().map_err(engine_error)
}

/// An engine error, with its hint where it has one.
pub fn engine_error(e: rimg::engine::EngineError) -> anyhow::Error {
    match e.hint() {
        Some(hint) => Hinted {
            message: e.to_string(),
            hint,
        }
        .into(),
        None => e.into(),
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
        config: cli.config.clone(),
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
        Command::Import(args) | Command::Image(ImageCommand::Import(args)) => {
            import::run(args, ctx)
        }
        Command::Images(args) | Command::Image(ImageCommand::Ls(args)) => images::run(args, ctx),
        Command::History(args) | Command::Image(ImageCommand::History(args)) => {
            history::run(args, ctx)
        }
        Command::Inspect(args) | Command::Image(ImageCommand::Inspect(args)) => {
            inspect::run(args, ctx)
        }
        Command::Tag(args) | Command::Image(ImageCommand::Tag(args)) => tag::run(args, ctx),
        Command::Rmi(args) | Command::Image(ImageCommand::Rm(args)) => rmi::run(args, ctx),
        Command::Prune(args) | Command::Image(ImageCommand::Prune(args)) => prune::run(args, ctx),
        Command::Check(args) => check::run(args, ctx),
        Command::Load(args) | Command::Image(ImageCommand::Load(args)) => load::run(args, ctx),
        Command::Save(args) | Command::Image(ImageCommand::Save(args)) => save::run(args, ctx),
        Command::PushPeer(args) => push_peer::run(args, ctx),
        Command::Listen(args) => listen::run(args, ctx),
        Command::Receive(args) => receive::run(args, ctx),
        Command::Id(args) => id::run(args, ctx),
        Command::Trust(args) => trust::run(args, ctx),
    }
}

/// Writes data to stdout. A closed pipe surfaces as an error that
/// [`report`] treats as success (`rimg images | head` is not a failure).
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
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
    report_error(error);
    ExitCode::FAILURE
}

/// Prints an error (`error:`, its causes, a hint) without ending the
/// command, for commands that go on with their other arguments.
pub fn report_error(error: &anyhow::Error) {
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
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every command and flag (a
    /// subcommand's `-q` beside the global `-q`, for instance).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
