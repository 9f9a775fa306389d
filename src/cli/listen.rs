//! `rimg listen`: a long-running receiver that admits only the senders in
//! `authorized_peers`, and logs each connection: who it was, what it stored
//! and what it refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Semaphore;

use rimg::store::Store;
use rimg::transfer::identity::{Identity, TrustFile};
use rimg::transfer::receive::{Deliver, ReceiveOptions, serve};
use rimg::transfer::session::Limits;
use rimg::transfer::{close, tls};

use super::Context;
use super::transfer_view::{View, runtime};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7423")]
    addr: SocketAddr,

    /// Transfers served at once; more are refused as busy.
    #[arg(long, value_name = "N", default_value_t = 4)]
    max_transfers: usize,

    /// Seconds without a byte on a stream before a transfer is dropped.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    stall_timeout: u64,

    /// Largest blob accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 30)]
    max_blob_size: u64,

    /// Also load what is received into the local Docker Engine.
    #[arg(long, value_enum, value_name = "docker-daemon")]
    into: Option<super::into::Into>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let config = ctx.config_dir();
    let identity = Identity::load_or_create(&config)?;
    let opts = ReceiveOptions {
        limits: Limits {
            max_blob_size: args.max_blob_size,
            ..Limits::default()
        },
        stall: Duration::from_secs(args.stall_timeout.max(1)),
        into: args
            .into
            .map(|_| Arc::new(super::into::EngineDelivery) as Arc<dyn Deliver>),
        ..ReceiveOptions::default()
    };
    let authorized = TrustFile::authorized(&config);
    if authorized.entries()?.is_empty() {
        eprintln!(
            "warning: {} lists no sender yet; every connection will be refused (add one with `rimg trust add`)",
            authorized.path().display()
        );
    }

    let rt = runtime()?;
    rt.block_on(async {
        let endpoint = tls::server(&identity, args.addr)?;
        eprintln!(
            "listening on {} as {} (store {})",
            endpoint.local_addr()?,
            identity.fingerprint(),
            store.root().display()
        );
        let slots = Arc::new(Semaphore::new(args.max_transfers.max(1)));
        let view = Arc::new(View::new(ctx.progress(), false, None));
        while let Some(incoming) = endpoint.accept().await {
            let slot = slots.clone().try_acquire_owned().ok();
            let (store, opts, view) = (store.clone(), opts.clone(), view.clone());
            let authorized = TrustFile::authorized(&config);
            let max = args.max_transfers;
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{remote}: handshake failed: {e}");
                        return;
                    }
                };
                let Some(slot) = slot else {
                    eprintln!("{remote}: refused: {max} transfers already in progress");
                    let reason = format!("receiver busy: {max} transfers already in progress");
                    conn.close(close::BUSY.into(), reason.as_bytes());
                    return;
                };
                handle(conn, remote, &authorized, store, opts, view).await;
                drop(slot);
            });
        }
        Ok(())
    })
}

async fn handle(
    conn: quinn::Connection,
    remote: SocketAddr,
    authorized: &TrustFile,
    store: Store,
    opts: ReceiveOptions,
    view: Arc<View>,
) {
    let Some(fingerprint) = tls::peer_fingerprint(&conn) else {
        conn.close(close::NOT_AUTHORIZED.into(), b"no client certificate");
        return;
    };
    // Read on every connection, so `rimg trust add` needs no restart.
    let name = match authorized.entries() {
        Ok(entries) => entries
            .into_iter()
            .find(|e| e.fingerprint == fingerprint)
            .map(|e| e.label),
        Err(e) => {
            eprintln!("{remote}: refused: {e}");
            None
        }
    };
    let Some(name) = name else {
        eprintln!("{remote}: refused sender {fingerprint}: not in authorized_peers");
        let reason = format!(
            "sender {fingerprint} is not authorized by this listener (add it there with `rimg trust add {fingerprint}`)"
        );
        conn.close(close::NOT_AUTHORIZED.into(), reason.as_bytes());
        return;
    };
    let who = format!("{remote} ({name})");
    view.log(&format!("{who}: connected"));
    match serve(conn, &who, store.clone(), opts, view.clone()).await {
        Ok(r) => {
            let names: Vec<String> = r.images.iter().flat_map(|(_, n)| n.clone()).collect();
            view.log(&format!(
                "{who}: stored {} blob(s), {} already present; loaded {}",
                r.blobs_stored,
                r.blobs_skipped,
                if names.is_empty() {
                    "-".into()
                } else {
                    names.join(", ")
                }
            ));
            // Loaded into the engine before `done`, so the sender saw this
            // too.
            match &r.engine {
                Some(Ok(lines)) => lines.iter().for_each(|l| view.log(&format!("{who}: {l}"))),
                Some(Err(e)) => view.log(&format!(
                    "{who}: loading into the Docker Engine failed: {e}"
                )),
                None => {}
            }
        }
        Err(e) => {
            // Errors about the connection already name the peer.
            let msg = e.one_line();
            let msg = msg.strip_prefix(&format!("{who}: ")).unwrap_or(&msg);
            view.log(&format!("{who}: transfer failed: {msg}"));
        }
    }
}
