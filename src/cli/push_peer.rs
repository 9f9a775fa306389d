//! `rimg push-peer IMAGE... DEST`: send images to another store, only the
//! blobs it lacks.
//!
//! DEST `host:port` (or `rimg://host:port`) is a running `rimg listen`,
//! whose fingerprint is pinned in `known_peers`. DEST `[user@]host` starts
//! `rimg receive --bootstrap` over ssh, which prints the port, fingerprint
//! and token to connect with: ssh authenticates, QUIC carries the data.
//!
//! IMAGE `docker-daemon:NAME[:TAG]` (or `docker-daemon:ID`) is read from
//! the local Docker Engine instead of the store: offered by ID and DiffIDs
//! from its inspect data, then only the blobs the receiver lacks are sent
//! out of one streamed export (`rimg::transfer::send_engine`).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use rimg::digest::Digest;
use rimg::reference::Reference;
use rimg::store::Store;
use rimg::transfer::auto::Compress;
use rimg::transfer::identity::{Identity, TrustEntry, TrustFile};
use rimg::transfer::send::{Outgoing, SendOptions, Summary, send};
use rimg::transfer::send_engine::{EngineOutgoing, OpenExport, send_engine};
use rimg::transfer::{TransferError, close, tls};

use super::transfer_view::{View, parse_rate, runtime};
use super::{Context, Hinted};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: names, IDs or ID prefixes, or `docker-daemon:NAME[:TAG]` for
    /// images of the local Docker Engine.
    #[arg(required = true, num_args = 1.., value_name = "IMAGE")]
    images: Vec<String>,

    /// `host:port` for a `rimg listen`, or `[user@]host` to start a
    /// receiver over ssh.
    #[arg(required = true, value_name = "DEST")]
    dest: String,

    /// One JSON object per line on stdout, ending with a `done` event.
    #[arg(long)]
    json: bool,

    /// The ssh command for `[user@]host` (as rsync's -e).
    #[arg(
        short = 'e',
        long = "rsh",
        value_name = "SSH_COMMAND",
        default_value = "ssh"
    )]
    rsh: String,

    /// The rimg binary on the remote host.
    #[arg(long, value_name = "PATH", default_value = "rimg")]
    remote_rimg: String,

    /// The store on the remote host (its default otherwise).
    #[arg(long, value_name = "DIR")]
    remote_root: Option<String>,

    /// Have the remote receiver (ssh) also load the images into its Docker
    /// Engine. A listener decides this itself (`rimg listen --into`).
    #[arg(long, value_enum, value_name = "docker-daemon")]
    into: Option<super::into::Into>,

    /// Pin a listener's fingerprint on first contact without asking.
    #[arg(long)]
    accept_new: bool,

    /// zstd on the wire: `auto` when it is faster for the link.
    #[arg(long, value_enum, default_value = "auto")]
    compress: Compress,

    /// Limit the wire rate, in bytes per second (K, M, G suffixes).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,

    /// Blobs sent at once, each on its own stream.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    streams: u16,
}

/// Where to send.
enum Dest {
    Listener { host: String, port: u16 },
    Ssh { target: String, host: String },
}

fn parse_dest(dest: &str) -> Result<Dest> {
    let bare = dest.strip_prefix("rimg://").unwrap_or(dest);
    if let Ok(addr) = bare.parse::<SocketAddr>() {
        return Ok(Dest::Listener {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    if let Some((host, port)) = bare.rsplit_once(':') {
        let port = port
            .parse()
            .map_err(|_| anyhow!("invalid port in destination {dest:?}"))?;
        return Ok(Dest::Listener {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        });
    }
    if bare.is_empty() || bare.starts_with('-') {
        bail!("invalid destination {dest:?}");
    }
    let host = bare.rsplit_once('@').map_or(bare, |(_, h)| h).to_string();
    Ok(Dest::Ssh {
        target: bare.to_string(),
        host,
    })
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let (dest_arg, names) = (&args.dest, &args.images[..]);
    let dest = parse_dest(dest_arg)?;
    let store = ctx.store()?;
    let mut payload = Some(payload(&store, names)?);
    let config = ctx.config_dir();
    let identity = Identity::load_or_create(&config)?;
    let view = Arc::new(View::new(ctx.progress(), args.json, Some(dest_arg.clone())));
    let mut opts = SendOptions {
        compress: args.compress,
        bwlimit: args.bwlimit,
        streams: args.streams.into(),
        ..SendOptions::default()
    };

    let rt = runtime()?;
    let summary = match dest {
        Dest::Listener { .. } if args.into.is_some() => {
            return Err(Hinted {
                message: "--into applies to an ssh destination; a listener decides for itself"
                    .into(),
                hint: "start the listener with `rimg listen --into docker-daemon`".into(),
            }
            .into());
        }
        Dest::Listener { host, port } => {
            let label = format!("{host}:{port}");
            let pin = |seen: &Digest| pin_listener(&config, &label, seen, args.accept_new, ctx);
            rt.block_on(async {
                let (endpoint, conn) = connect(&identity, &host, port, pin).await?;
                let payload = payload.take().expect("sent once");
                let pushed = push(&conn, &label, &store, payload, &opts, view.clone());
                let result = until_interrupted(&conn, pushed).await;
                finish_connection(&endpoint, &conn, &result).await;
                result.map_err(transfer_error)
            })?
        }
        Dest::Ssh { target, host } => {
            let mut child = spawn_bootstrap(&args, &target)?;
            let line = read_bootstrap_line(&mut child, &target)?;
            let (port, fingerprint, token) = parse_bootstrap_line(&line, &target)?;
            opts.token = Some(token);
            let result = rt.block_on(async {
                let check = |seen: &Digest| {
                    if seen == &fingerprint {
                        Ok(())
                    } else {
                        Err(anyhow!(
                            "the receiver on {target} presented {seen}, not the {fingerprint} it printed over ssh"
                        ))
                    }
                };
                let (endpoint, conn) = connect(&identity, &host, port, check).await?;
                let payload = payload.take().expect("sent once");
                let pushed = push(&conn, &target, &store, payload, &opts, view.clone());
                let result = until_interrupted(&conn, pushed).await;
                finish_connection(&endpoint, &conn, &result).await;
                result.map_err(transfer_error)
            });
            reap(child, result.is_ok());
            result?
        }
    };
    view.finish();

    let mut done = serde_json::json!({
        "event": "done",
        "dest": dest_arg,
        "images": summary.images,
        "blobs_total": summary.blobs_total,
        "blobs_sent": summary.blobs_sent,
        "blobs_skipped": summary.blobs_skipped,
        "bytes_raw": summary.bytes_raw,
        "bytes_wire": summary.bytes_wire,
        "seconds": summary.seconds,
    });
    // Only where they apply: bytes of an engine's export read, and the
    // receiving engine's report.
    if summary.bytes_export > 0 {
        done["bytes_export"] = summary.bytes_export.into();
    }
    if let Some(engine) = &summary.engine {
        done["engine"] = serde_json::json!(engine);
    }
    view.event(done);
    if let Some(error) = summary.engine.and_then(|e| e.error) {
        bail!(
            "{dest_arg}: the images are in the receiver's store, but its Docker Engine did not load them: {error}"
        );
    }
    Ok(())
}

/// What one push sends: images of the store, or of the local engine.
enum Payload {
    Store(Vec<Outgoing>),
    Engine(Vec<EngineOutgoing>, OpenExport),
}

fn payload(store: &Store, names: &[String]) -> Result<Payload> {
    let engine_names = names
        .iter()
        .filter(|n| n.starts_with(rimg::engine::SCHEME))
        .count();
    if engine_names == 0 {
        let images = names
            .iter()
            .map(|n| outgoing(store, n))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Payload::Store(images));
    }
    if engine_names != names.len() {
        return Err(Hinted {
            message: "a push sends images of the store or of the Docker Engine, not both".into(),
            hint: "push the docker-daemon: images and the others with two commands".into(),
        }
        .into());
    }

    let engine = super::connect_engine()?;
    let images = names
        .iter()
        .map(|n| engine_outgoing(&engine, n))
        .collect::<Result<Vec<_>>>()?;
    let export_names: Vec<String> = names
        .iter()
        .filter_map(|n| rimg::engine::parse_source(n).map(String::from))
        .collect();
    let open: OpenExport = Box::new(move || {
        let names: Vec<&str> = export_names.iter().map(String::as_str).collect();
        let reader = engine.export_all(&names).map_err(std::io::Error::other)?;
        // The engine's runtime drives the export: it lives as long as the
        // reader.
        Ok(Box::new(EngineExport {
            reader,
            _engine: engine,
        }) as Box<dyn std::io::Read>)
    });
    Ok(Payload::Engine(images, open))
}

/// An engine's export together with the engine that streams it.
struct EngineExport {
    reader: rimg::engine::ExportReader,
    _engine: rimg::engine::Engine,
}

impl std::io::Read for EngineExport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

/// An image of the local engine, from its inspect data, with the names it
/// will get: the tag the user typed, or all its tags when named by ID.
fn engine_outgoing(engine: &rimg::engine::Engine, source: &str) -> Result<EngineOutgoing> {
    let Some(name) = rimg::engine::parse_source(source) else {
        return Err(Hinted {
            message: format!("unknown image source {source:?}"),
            hint: "name an image in the local Docker Engine as docker-daemon:NAME[:TAG]".into(),
        }
        .into());
    };
    let image = engine.inspect(name).map_err(super::engine_error)?;
    let tags: Vec<Reference> = image
        .repo_tags
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    let typed = name.parse::<Reference>().ok().filter(|r| tags.contains(r));
    let names = match typed {
        Some(r) => vec![r.to_string()],
        None => tags.iter().map(|t| t.to_string()).collect(),
    };
    Ok(EngineOutgoing {
        source: source.to_string(),
        names,
        id: image.id,
        diff_ids: image.diff_ids,
        size: image.size,
    })
}

/// Sends the payload over a checked connection.
async fn push(
    conn: &quinn::Connection,
    peer: &str,
    store: &Store,
    payload: Payload,
    opts: &SendOptions,
    view: Arc<View>,
) -> Result<Summary, TransferError> {
    match payload {
        Payload::Store(images) => send(conn, peer, store, &images, opts, view).await,
        Payload::Engine(images, open) => send_engine(conn, peer, &images, open, opts, view).await,
    }
}

/// A transfer error, with a hint where there is one.
fn transfer_error(e: TransferError) -> anyhow::Error {
    if let TransferError::Engine(export) = &e
        && let Some(hint) = export.hint()
    {
        return Hinted {
            message: e.one_line(),
            hint: hint.into(),
        }
        .into();
    }
    e.into()
}

/// An image from the store with the names it will get: the tag the user
/// typed, or every tag of the image when it was named by ID.
fn outgoing(store: &Store, name: &str) -> Result<Outgoing> {
    let image = store.resolve(name)?;
    let typed = name
        .parse::<Reference>()
        .ok()
        .filter(|r| image.tags.contains(r));
    let names = match typed {
        Some(r) => vec![r.to_string()],
        None => image.tags.iter().map(|t| t.to_string()).collect(),
    };
    let manifest_bytes = store.read_json_blob(&image.manifest_digest)?;
    Ok(Outgoing {
        image,
        names,
        manifest_bytes,
    })
}

/// Connects and checks the listener's fingerprint before anything is sent.
async fn connect(
    identity: &Identity,
    host: &str,
    port: u16,
    check: impl FnOnce(&Digest) -> Result<()>,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let peer = format!("{host}:{port}");
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let endpoint = tls::client(identity, addr)?;
    let connecting = endpoint
        .connect(addr, "rimg")
        .map_err(|source| TransferError::Connect {
            peer: peer.clone(),
            source,
        })?;
    let no_answer = || {
        anyhow!(
            "no answer from {peer} within 20 s: is `rimg listen` running there, \
             and does UDP port {port} reach it?"
        )
    };
    let conn = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .map_err(|_| no_answer())?
        .map_err(|e| match e {
            quinn::ConnectionError::TimedOut => no_answer(),
            e => TransferError::connection(&peer, e).into(),
        })?;
    let seen =
        tls::peer_fingerprint(&conn).ok_or_else(|| anyhow!("{peer} presented no certificate"))?;
    if let Err(e) = check(&seen) {
        conn.close(
            close::ERROR.into(),
            b"the sender does not trust this listener's fingerprint",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        return Err(e);
    }
    Ok((endpoint, conn))
}

/// Runs the push until it ends or the user stops it (Ctrl-C, SIGTERM).
/// Stopped, the connection is closed with that reason before the push is
/// dropped (a dropped blob stream would end as if complete, and the
/// receiver would report a short blob instead), so that the receiver lets
/// go of its partial blobs at once rather than after its idle timeout,
/// and the same push run again continues without waiting.
async fn until_interrupted<T>(
    conn: &quinn::Connection,
    push: impl std::future::Future<Output = Result<T, TransferError>>,
) -> Result<T, TransferError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match &mut term {
            Some(term) => term.recv().await,
            None => std::future::pending().await,
        }
    };
    let push = std::pin::pin!(push);
    let reason = tokio::select! {
        result = push => return result,
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminated => "terminated",
    };
    let error = TransferError::Interrupted(reason);
    conn.close(close::ERROR.into(), error.close_reason().as_bytes());
    Err(error)
}

/// Closes the connection (with the error as its reason, on failure) and
/// gives the close a moment to reach the receiver.
///
/// After a transfer that worked, the receiver has committed everything
/// and sent `done`: the close only lets it stop waiting, and goes out
/// with the first packet. Waiting out the whole draining period (three
/// probe timeouts, ~90 ms even on loopback, which was most of a push
/// where every blob was present) would only answer a receiver that never
/// saw it; that receiver stops waiting on its own (10 s). A failure's
/// reason is worth the full wait: it is what the receiver logs.
async fn finish_connection<T>(
    endpoint: &quinn::Endpoint,
    conn: &quinn::Connection,
    result: &Result<T, TransferError>,
) {
    let wait = match result {
        Ok(_) => (conn.rtt() * 4).clamp(Duration::from_millis(5), Duration::from_secs(1)),
        Err(e) => {
            let reason = e.close_reason();
            conn.close(close::ERROR.into(), reason.as_bytes());
            Duration::from_secs(1)
        }
    };
    let _ = tokio::time::timeout(wait, endpoint.wait_idle()).await;
}

/// known_peers, as ssh's known_hosts: pin on first contact when allowed,
/// refuse a changed fingerprint.
fn pin_listener(
    config: &std::path::Path,
    label: &str,
    seen: &Digest,
    accept_new: bool,
    ctx: &Context,
) -> Result<()> {
    let known = TrustFile::known(config);
    match known.lookup(label)? {
        Some(pinned) if &pinned == seen => return Ok(()),
        Some(pinned) => {
            return Err(Hinted {
                message: format!(
                    "the identity of the listener at {label} has changed: it was {pinned}, it is now {seen}. \
                     Someone could be impersonating it, or its identity was replaced; nothing was sent"
                ),
                hint: format!(
                    "if the change is expected, remove the line for {label} from {}",
                    known.path().display()
                ),
            }
            .into());
        }
        None => {}
    }
    let accepted = accept_new || ask(label, seen)?;
    if !accepted {
        return Err(Hinted {
            message: format!(
                "the listener at {label} is not known (its fingerprint is {seen}); nothing was sent"
            ),
            hint: "compare the fingerprint with `rimg id` on the listener, then pass --accept-new"
                .into(),
        }
        .into());
    }
    known.add(&TrustEntry {
        fingerprint: seen.clone(),
        label: label.to_string(),
    })?;
    ctx.status(&format!(
        "Permanently added {label} ({seen}) to {}",
        known.path().display()
    ));
    Ok(())
}

/// Asks on the terminal, as ssh does; `false` when there is none.
fn ask(label: &str, seen: &Digest) -> Result<bool> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    eprint!(
        "The authenticity of listener {label} can't be established.\nIts fingerprint is {seen}.\n\
         Are you sure you want to continue connecting (yes/no)? "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

/// Quotes a word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn spawn_bootstrap(args: &Args, target: &str) -> Result<Child> {
    // ssh joins the remote words into one line for the remote shell, so
    // each is quoted for that shell, and the whole again for ours.
    let mut remote = vec![shell_quote(&args.remote_rimg)];
    if let Some(root) = &args.remote_root {
        remote.push("--root".into());
        remote.push(shell_quote(root));
    }
    remote.extend(["--no-progress", "receive", "--bootstrap"].map(String::from));
    if args.into.is_some() {
        remote.extend(["--into", "docker-daemon"].map(String::from));
    }
    let remote: Vec<String> = remote.iter().map(|w| shell_quote(w)).collect();
    let line = format!("{} {} {}", args.rsh, shell_quote(target), remote.join(" "));
    tracing::debug!(command = %line, "starting the remote receiver");
    Command::new("sh")
        .arg("-c")
        .arg(&line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {line}"))
}

fn read_bootstrap_line(child: &mut Child, target: &str) -> Result<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout)
            .take(4096)
            .read_line(&mut line)
            .map(|_| line);
        let _ = tx.send(result);
    });
    let fail = |why: String| -> anyhow::Error {
        Hinted {
            message: format!("starting the receiver on {target} over ssh: {why}"),
            hint: "check that ssh works and that --remote-rimg names rimg on that host".into(),
        }
        .into()
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(line)) if !line.trim().is_empty() => Ok(line),
        Ok(Ok(_)) => Err(fail("it exited without printing its address".into())),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => {
            let _ = child.kill();
            Err(fail("no answer within 60 s".into()))
        }
    }
}

use std::io::Read as _;

fn parse_bootstrap_line(line: &str, target: &str) -> Result<(u16, Digest, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bad = || anyhow!("the receiver on {target} printed {line:?}, not `PORT FINGERPRINT TOKEN`");
    let [port, fingerprint, token] = words[..] else {
        return Err(bad());
    };
    Ok((
        port.parse().map_err(|_| bad())?,
        fingerprint.parse().map_err(|_| bad())?,
        token.to_string(),
    ))
}

/// Waits for the remote receiver (and ssh) to exit; kills them on failure.
fn reap(mut child: Child, ok: bool) {
    if !ok {
        let _ = child.kill();
    }
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert!(matches!(
            parse_dest("127.0.0.1:7070").unwrap(),
            Dest::Listener { port: 7070, .. }
        ));
        assert!(matches!(
            parse_dest("rimg://h:1").unwrap(),
            Dest::Listener { port: 1, .. }
        ));
        assert!(matches!(
            parse_dest("[::1]:5").unwrap(),
            Dest::Listener { port: 5, .. }
        ));
        assert!(
            matches!(parse_dest("deploy@web1").unwrap(), Dest::Ssh { host, .. } if host == "web1")
        );
        assert!(parse_dest("h:notaport").is_err());
        assert!(parse_dest("-oProxyCommand=x").is_err());
    }
}
