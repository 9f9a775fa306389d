//! `rimg receive --bootstrap`: the remote end of `push-peer [user@]host`,
//! started over ssh. It binds a UDP port with a one-time certificate,
//! prints `PORT FINGERPRINT TOKEN` on one line of stdout, serves exactly
//! one connection that presents the token, and exits.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};

use rimg::transfer::identity::Identity;
use rimg::transfer::receive::{Deliver, ReceiveOptions, serve};
use rimg::transfer::tls;

use super::Context;
use super::transfer_view::{View, runtime};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the connection line and serve one transfer (the only mode).
    #[arg(long, required = true)]
    bootstrap: bool,

    /// Also load what is received into the local Docker Engine.
    #[arg(long, value_enum, value_name = "docker-daemon")]
    into: Option<super::into::Into>,

    /// Seconds to wait for the sender to connect.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    accept_timeout: u64,
}

/// The address the ssh connection came in on: reachable by the sender.
fn bind_ip() -> IpAddr {
    std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|v| v.split_whitespace().nth(2).and_then(|ip| ip.parse().ok()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    debug_assert!(args.bootstrap);
    let store = ctx.store()?;
    let identity = Identity::ephemeral()?;
    let token = random_token()?;
    let opts = ReceiveOptions {
        token: Some(token.clone()),
        into: args
            .into
            .map(|_| Arc::new(super::into::EngineDelivery) as Arc<dyn Deliver>),
        ..ReceiveOptions::default()
    };

    let rt = runtime()?;
    rt.block_on(async {
        let endpoint = tls::server(&identity, SocketAddr::new(bind_ip(), 0))?;
        let port = endpoint.local_addr()?.port();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{port} {} {token}", identity.fingerprint())?;
            out.flush()?;
        }

        let wait = Duration::from_secs(args.accept_timeout);
        let incoming = tokio::time::timeout(wait, endpoint.accept())
            .await
            .map_err(|_| anyhow!("no sender connected within {} s", wait.as_secs()))?
            .ok_or_else(|| anyhow!("the endpoint closed"))?;
        let remote = incoming.remote_address();
        let conn = incoming.await?;
        let view = Arc::new(View::new(ctx.progress(), false, None));
        let who = remote.to_string();
        let result = serve(conn, &who, store.clone(), opts, view).await;
        // Let the close (and its reason, on failure) reach the sender.
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        let received = result?;
        // The engine's report went to the sender in the transfer; a failed
        // load is this command's failure too.
        if let Some(Err(e)) = received.engine {
            return Err(anyhow!("loading into the Docker Engine failed: {e}"));
        }
        Ok(())
    })
}
