//! Pods as network namespaces, the way a node runs them: every pod is a
//! namespace with an `eth0` joined by a veth pair to a bridge in a hub
//! namespace, an address from a range that exists only inside this test
//! bed (10.244.0.0/24 and fd00:244::/64, service VIPs in 10.96.0.0/16 and
//! fd00:96::/64), and an `/etc/netns/<pod>/hosts` naming the services by
//! their VIPs, so unchanged clients (`curl http://reviews:9080/`) work.
//!
//! Namespaces are named `tmpods-<pid>-<bed>-<pod>`: unique per run, removed
//! when the [`Bed`] drops (also while a test panics), and swept at the next
//! start when a crashed run (its pid gone) left some behind.
//!
//! The bed needs root (CI runs as root). Without it [`Bed::new`] says why
//! and returns `None` so the test can skip — except under `CI=true`, where
//! it fails.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every namespace this bed creates (and sweeps).
pub const PREFIX: &str = "tmpods-";

/// The hub's address, every pod's default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The hub's IPv6 address.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);

static BEDS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// A test bed: a hub namespace with a bridge, and the pods joined to it.
pub struct Bed {
    id: String,
    hub: String,
    pods: Vec<String>,
    /// `name vip` lines every pod's `/etc/hosts` carries.
    hosts: Vec<(String, IpAddr)>,
}

impl Bed {
    /// A fresh bed for `test`, or `None` (after saying why) when this
    /// machine cannot run one and `CI` is not `true`.
    pub fn new(test: &str) -> Option<Bed> {
        let missing: Vec<&str> = ["ip", "iptables-save", "ip6tables-save", "setpriv", "curl"]
            .into_iter()
            .filter(|p| !on_path(p))
            .collect();
        let why = if !rustix::process::geteuid().is_root() {
            Some("network-namespace pods need root".to_owned())
        } else if !missing.is_empty() {
            Some(format!(
                "{} not installed (.ci/run installs iptables, iproute2, util-linux, curl)",
                missing.join(", ")
            ))
        } else {
            None
        };
        if let Some(why) = why {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why}, and CI=true requires these tests to run"
            );
            // Straight to stderr: the test harness captures `eprintln!`.
            let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
            return None;
        }
        sweep_stale();
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let hub = format!("{id}-hub");
        let bed = Bed {
            id,
            hub: hub.clone(),
            pods: Vec::new(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{GATEWAY6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        Some(bed)
    }

    /// Adds a pod named `name` (its namespace, veth, addresses, routes and
    /// hosts file).
    pub fn pod(&mut self, name: &str) -> Pod {
        let index = self.pods.len() as u8 + 10;
        let netns = format!("{}-{name}", self.id);
        let ip4 = Ipv4Addr::new(10, 244, 0, index);
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(index));
        let hub_end = format!("v{index}");
        ip(&["netns", "add", &netns]);
        self.pods.push(netns.clone());
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &self.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ]);
        ip(&[
            "-n", &self.hub, "link", "set", &hub_end, "master", "br0", "up",
        ]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip4}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ]);
        ip(&[
            "-n",
            &netns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY6.to_string(),
        ]);
        self.hosts.push((name.to_owned(), IpAddr::V4(ip4)));
        self.write_hosts();
        Pod {
            name: name.to_owned(),
            netns,
            ip: ip4,
            ip6,
        }
    }

    /// Names a service by its VIP in every pod's `/etc/hosts` (short name
    /// and `<name>.default.svc.cluster.local`), as cluster DNS would.
    pub fn service(&mut self, name: &str, vip: IpAddr) {
        self.hosts.push((name.to_owned(), vip));
        self.write_hosts();
    }

    fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for (name, addr) in &self.hosts {
            text.push_str(&format!("{addr} {name} {name}.default.svc.cluster.local\n"));
        }
        for netns in &self.pods {
            let dir = etc_dir(netns);
            std::fs::create_dir_all(&dir).expect("/etc/netns/<pod>");
            std::fs::write(dir.join("hosts"), &text).expect("hosts file");
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for netns in self.pods.iter().chain(std::iter::once(&self.hub)) {
            remove(netns);
        }
    }
}

fn etc_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// Kills what still runs in `netns`, then deletes it and its `/etc/netns`
/// files. Never panics (it runs in `Drop`, maybe while a test panics).
fn remove(netns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "delete", netns])
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(etc_dir(netns));
}

/// Removes namespaces left by runs that crashed before their `Drop`: those
/// with this bed's prefix whose process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        // A pid whose /proc entry cannot be read is left alone.
        let gone = std::fs::metadata(PathBuf::from("/proc").join(pid))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        if !pid.is_empty() && gone {
            remove(&name);
        }
    }
}

/// One pod of a [`Bed`].
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its short name (also its host name in every pod's `/etc/hosts`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address.
    pub ip6: Ipv6Addr,
}

impl Pod {
    /// `program` run inside the pod as root (`ip netns exec`, which also
    /// puts the pod's `/etc/hosts` in place).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// `program` run inside the pod as `uid`/`gid` with no supplementary
    /// groups (util-linux `setpriv`), as a container's user would.
    pub fn command_as(&self, uid: u32, gid: u32, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--", program]);
        cmd
    }

    /// The same as a tokio command, for async tests.
    pub fn tokio_command_as(&self, uid: u32, gid: u32, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.command_as(uid, gid, program));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `f` on a thread inside the pod's network namespace: sockets it
    /// opens belong to the pod and stay there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.netns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).expect("pod namespace");
                    rustix::thread::move_into_link_name_space(
                        ns.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("setns into the pod");
                    f()
                })
                .join()
                .expect("thread in pod")
        })
    }

    /// A listening socket inside the pod.
    pub fn listen(&self, addr: SocketAddr) -> std::net::TcpListener {
        self.enter(|| {
            let listener = std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", self.name));
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        })
    }

    /// A UDP socket inside the pod.
    pub fn udp(&self, addr: SocketAddr) -> std::net::UdpSocket {
        self.enter(|| std::net::UdpSocket::bind(addr).expect("udp socket in pod"))
    }

    /// The pod's rules and loopback addresses, as `iptables-save`,
    /// `ip6tables-save` and `ip addr show dev lo` print them, without
    /// their timestamps and counters: what must be the same before
    /// `tracemesh iptables` and after its `--cleanup`.
    pub fn netfilter_state(&self) -> String {
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
