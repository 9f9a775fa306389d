//! `push-peer [user@]host` through a real sshd, started by the test on a
//! loopback port with its own host key and a client key it authorizes.
//! The remote `rimg receive --bootstrap` is this build's binary.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::{done_event, image_in};
use common::seed::seed_archive;
use common::{Env, corpus, need, need_docker};

struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

fn start_sshd(dir: &Path) -> Sshd {
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    // sshd insists on its privilege separation directory, which only its
    // service unit normally creates.
    let _ = std::fs::create_dir_all("/run/sshd");
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let mut child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(log)
        .spawn()
        .expect("sshd starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            panic!("sshd did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port }
}

fn ssh_command(dir: &Path, port: u16) -> String {
    format!(
        "ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
        dir.join("client_key").display()
    )
}

#[test]
fn push_over_an_ssh_bootstrap() {
    if !need("sshd", &["test", "-x", "/usr/sbin/sshd"]) || !need("ssh", &["ssh", "-V"]) {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    seed_archive(&sender.root(), &corpus("d20-edge.tar"));
    seed_archive(&sender.root(), &corpus("d20-busybox.tar"));
    let sshd = start_sshd(sender.dir.path());
    let rsh = ssh_command(sender.dir.path(), sshd.port);
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let dest = format!("{user}@127.0.0.1");
    let remote_root = receiver.root().display().to_string();
    let push = |image: &str| {
        sender.ok(&[
            "push-peer",
            "--json",
            "-e",
            &rsh,
            "--remote-rimg",
            env!("CARGO_BIN_EXE_rimg"),
            "--remote-root",
            &remote_root,
            image,
            &dest,
        ])
    };

    let out = push("edge:1");
    let done = done_event(&out);
    assert_eq!(done["blobs_sent"], 6, "{out}");
    let (id, _) = image_in(&receiver, "docker.io/library/edge:1");
    assert_eq!(
        id,
        "sha256:84d1d852ada3a56dfd2f5beefb016fdc2bd984ed48b6684afc6d47d2937ffd4c"
    );
    receiver.assert_consistent();

    // A second bootstrap dedupes like a listener does.
    let done = done_event(&push("bb:1"));
    assert_eq!(done["blobs_skipped"], 1);
    assert_eq!(done["blobs_sent"], 1);
    image_in(&receiver, "docker.io/library/bb:1");

    // Nothing is left running on the "remote" side: each receiver served
    // one connection and exited.
    let ps = Command::new("pgrep")
        .args(["-f", &remote_root])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "a bootstrap receiver is still running"
    );

    // A remote that is not rimg fails with a clear message.
    let err = sender.fails(&[
        "push-peer",
        "-e",
        &rsh,
        "--remote-rimg",
        "/bin/false",
        "bb:1",
        &dest,
    ]);
    assert!(err.contains("exited without printing its address"), "{err}");
}

#[test]
fn a_wrong_token_is_refused_by_the_bootstrap_receiver() {
    // The bootstrap receiver, run directly: a connection without its
    // token gets nothing.
    let receiver = Env::new();
    let mut child = receiver
        .cmd(&["receive", "--bootstrap", "--accept-timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{line}");
    assert!(words[1].starts_with("sha256:"));
    let port: u16 = words[0].parse().unwrap();

    let sender = Env::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use rimg::transfer::wire::{Message, VERSION};
        let identity =
            rimg::transfer::identity::Identity::load_or_create(&sender.config()).unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let endpoint = rimg::transfer::tls::client(&identity, addr).unwrap();
        let conn = endpoint.connect(addr, "rimg").unwrap().await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello {
            version: VERSION,
            token: Some("guess".into()),
        };
        rimg::transfer::write_message(&mut send, &hello, "r")
            .await
            .unwrap();
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                let reason = String::from_utf8_lossy(&c.reason).into_owned();
                assert!(reason.contains("token"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    });
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the receiver exits with an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

/// `push-peer --into docker-daemon docker-daemon:NAME user@host`: an
/// engine image straight to an ssh receiver that loads it into its engine
/// (here the same engine, which holds every layer already) and reports the
/// engine's result to the sender before the transfer is done.
#[test]
fn push_from_the_engine_over_ssh_into_its_engine() {
    if !need("sshd", &["test", "-x", "/usr/sbin/sshd"])
        || !need("ssh", &["ssh", "-V"])
        || !need_docker()
    {
        return;
    }
    let name = "rimg-test-ssh/bb:1";
    let out = Command::new("docker")
        .args(["load", "-q", "-i"])
        .arg(corpus("d20-busybox.tar"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        Command::new("docker")
            .args(["tag", "bb:1", name])
            .status()
            .unwrap()
            .success()
    );
    let _ = Command::new("docker").args(["rmi", "bb:1"]).output();
    struct Remove(&'static str);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", self.0]).output();
        }
    }
    let _remove = Remove(name);

    let (sender, receiver) = (Env::new(), Env::new());
    let sshd = start_sshd(sender.dir.path());
    let rsh = ssh_command(sender.dir.path(), sshd.port);
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let dest = format!("{user}@127.0.0.1");
    let out = sender.ok(&[
        "push-peer",
        "--into",
        "docker-daemon",
        "-e",
        &rsh,
        "--remote-rimg",
        env!("CARGO_BIN_EXE_rimg"),
        "--remote-root",
        &receiver.root().display().to_string(),
        &format!("docker-daemon:{name}"),
        &dest,
    ]);
    assert!(
        out.contains(&format!("Loaded image: {name} on {dest}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Loaded image: {name} into the Docker Engine on {dest}"
        )),
        "{out}"
    );
    image_in(&receiver, &format!("docker.io/{name}"));
    receiver.assert_consistent();
}
