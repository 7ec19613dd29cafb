//! The pods test bed: the binary's own bed (`src/pods`, which `tracemesh
//! demo --pods` runs Bookinfo in) with what tests add — skipping without
//! root, panicking instead of returning errors, and sockets opened inside
//! a pod.
//!
//! Namespaces are named `tmpods-<pid>-<bed>-<pod>`, addresses come from
//! 10.244.0.0/24 and fd00:244::/64 (service VIPs in 10.96.0.0/16 and
//! fd00:96::/64), and every pod's `/etc/netns/<pod>/hosts` names the
//! services; the bed removes them all when it drops.
//!
//! The bed needs root (CI runs as root). Without it [`Bed::new`] says why
//! and returns `None` so the test can skip — except under `CI=true`, where
//! it fails.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

#[allow(dead_code, unused_imports)]
#[path = "../../src/pods/mod.rs"]
mod shared;

#[allow(unused_imports)] // each test binary uses its part
pub use shared::{PREFIX, Pod, sweep_stale};

/// A test bed: a hub namespace with a bridge, and the pods joined to it.
pub struct Bed(shared::Bed);

impl Bed {
    /// A fresh bed for `test`, or `None` (after saying why) when this
    /// machine cannot run one and `CI` is not `true`.
    pub fn new(test: &str) -> Option<Bed> {
        let why = shared::cannot_run(&["ip", "iptables-save", "ip6tables-save", "setpriv", "curl"])
            .map(|why| {
                if why.ends_with("not installed") {
                    format!("{why} (.ci/run installs iptables, iproute2, util-linux, curl)")
                } else {
                    why
                }
            });
        if let Some(why) = why {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why}, and CI=true requires these tests to run"
            );
            // Straight to stderr: the test harness captures `eprintln!`.
            let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
            return None;
        }
        Some(Bed(
            shared::Bed::new().unwrap_or_else(|e| panic!("{test}: {e:#}"))
        ))
    }

    /// Adds a pod named `name` (its namespace, veth, addresses, routes and
    /// hosts file).
    pub fn pod(&mut self, name: &str) -> Pod {
        self.0
            .pod(name)
            .unwrap_or_else(|e| panic!("pod {name}: {e:#}"))
    }

    /// Names a service by its VIP in every pod's `/etc/hosts` (short name
    /// and `<name>.default.svc.cluster.local`), as cluster DNS would.
    pub fn service(&mut self, name: &str, vip: IpAddr) {
        self.0
            .service(name, vip)
            .unwrap_or_else(|e| panic!("service {name}: {e:#}"));
    }
}

/// What tests do with a pod beyond running commands in it.
pub trait PodExt {
    /// `program` run inside the pod as `uid`/`gid`, as a tokio command.
    fn tokio_command_as(&self, uid: u32, gid: u32, program: &str) -> tokio::process::Command;
    /// A listening socket inside the pod.
    fn listen(&self, addr: SocketAddr) -> std::net::TcpListener;
    /// A UDP socket inside the pod.
    fn udp(&self, addr: SocketAddr) -> std::net::UdpSocket;
    /// The pod's rules and loopback addresses, as `iptables-save`,
    /// `ip6tables-save` and `ip addr show dev lo` print them, without
    /// their timestamps and counters: what must be the same before
    /// `tracemesh iptables` and after its `--cleanup`.
    fn netfilter_state(&self) -> String;
}

impl PodExt for Pod {
    /// The same as a tokio command, for async tests.
    fn tokio_command_as(&self, uid: u32, gid: u32, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.command_as(uid, gid, program));
        cmd.kill_on_drop(true);
        cmd
    }

    /// A listening socket inside the pod.
    fn listen(&self, addr: SocketAddr) -> std::net::TcpListener {
        self.enter(|| {
            let listener = std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", self.name));
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        })
        .expect("enter the pod")
    }

    /// A UDP socket inside the pod.
    fn udp(&self, addr: SocketAddr) -> std::net::UdpSocket {
        self.enter(|| std::net::UdpSocket::bind(addr).expect("udp socket in pod"))
            .expect("enter the pod")
    }

    /// The pod's rules and loopback addresses, as `iptables-save`,
    /// `ip6tables-save` and `ip addr show dev lo` print them, without
    /// their timestamps and counters: what must be the same before
    /// `tracemesh iptables` and after its `--cleanup`.
    fn netfilter_state(&self) -> String {
        let mut state = String::new();
        for (program, args) in [
            ("iptables-save", &[][..]),
            ("ip6tables-save", &[]),
            ("ip", &["addr", "show", "dev", "lo"]),
        ] {
            let out = self.command(program).args(args).output().expect(program);
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                // `:CHAIN POLICY [packets:bytes]` → without the counters.
                let line = match line.rsplit_once(" [") {
                    Some((head, _)) if line.starts_with(':') => head,
                    _ => line,
                };
                state.push_str(line);
                state.push('\n');
            }
        }
        state
    }
}
