//! Pods as network namespaces, the way a node runs them: every pod is a
//! namespace with an `eth0` joined by a veth pair to a bridge in a hub
//! namespace, an address from a range that exists only inside the bed
//! (10.244.0.0/24 and fd00:244::/64; service VIPs are chosen by the caller,
//! Kubernetes' 10.96.0.0/16 by convention), and an `/etc/netns/<pod>/hosts`
//! naming the services by their VIPs, so unchanged clients
//! (`curl http://reviews:9080/`) work. `ip netns exec` puts that file in
//! place for whatever it runs.
//!
//! Namespaces are named `tmpods-<pid>-<bed>-<pod>`: unique per process,
//! removed (with what still runs in them) when the [`Bed`] drops, and swept
//! at the next [`Bed::new`] when a process that died before its `Drop`
//! (its pid gone) left some behind.
//!
//! `tracemesh demo --pods` runs Bookinfo in a bed; the pods tests build
//! theirs with the same code. Everything here needs root and iproute2.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, anyhow, bail};

/// The prefix of every namespace a bed creates (and sweeps).
pub const PREFIX: &str = "tmpods-";

/// The hub's address, every pod's default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The hub's IPv6 address.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";

static BEDS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args`; its stderr is the error when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("ip {} (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Why this process cannot build a bed of pods (not root, or `programs`
/// missing from `PATH`), or `None` when it can.
pub fn cannot_run(programs: &[&str]) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network-namespace pods need root".to_owned());
    }
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

/// A bed: a hub namespace with a bridge, and the pods joined to it.
/// Dropping it removes every namespace it made and what runs in them.
pub struct Bed {
    id: String,
    hub: String,
    pods: Vec<String>,
    /// `(name, address)` lines every pod's `/etc/hosts` carries.
    hosts: Vec<(String, IpAddr)>,
}

impl Bed {
    /// A fresh bed: the hub namespace and its bridge. Needs root.
    ///
    /// # Errors
    /// When a namespace, link or address cannot be made (`ip`'s message).
    pub fn new() -> anyhow::Result<Bed> {
        sweep_stale();
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let hub = format!("{id}-hub");
        ip(&["netns", "add", &hub])?;
        // From here on, Drop removes the hub whatever fails next.
        let bed = Bed {
            id,
            hub: hub.clone(),
            pods: Vec::new(),
            hosts: Vec::new(),
        };
        let gateway = format!("{GATEWAY}/24");
        let gateway6 = format!("{GATEWAY6}/64");
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &gateway, "dev", "br0"])?;
        ip(&["-n", &hub, "addr", "add", &gateway6, "dev", "br0", "nodad"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        Ok(bed)
    }

    /// The hub's namespace name (it routes between the pods; a thread
    /// that enters it reaches every pod's address).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Adds a pod named `name`: its namespace, veth, addresses, routes and
    /// hosts file (which names the pod by its address).
    ///
    /// # Errors
    /// When the bed is full (240 pods) or `ip` fails.
    pub fn pod(&mut self, name: &str) -> anyhow::Result<Pod> {
        let index = u8::try_from(self.pods.len() + 10)
            .ok()
            .filter(|i| *i < 250)
            .ok_or_else(|| anyhow!("a bed holds at most 240 pods"))?;
        let netns = format!("{}-{name}", self.id);
        let ip4 = Ipv4Addr::new(10, 244, 0, index);
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(index));
        let hub_end = format!("v{index}");
        ip(&["netns", "add", &netns])?;
        self.pods.push(netns.clone());
        let (addr4, addr6) = (format!("{ip4}/24"), format!("{ip6}/64"));
        let (gw4, gw6) = (GATEWAY.to_string(), GATEWAY6.to_string());
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &self.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&[
            "-n", &self.hub, "link", "set", &hub_end, "master", "br0", "up",
        ])?;
        ip(&["-n", &netns, "addr", "add", &addr4, "dev", "eth0"])?;
        ip(&["-n", &netns, "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "via", &gw4])?;
        ip(&["-n", &netns, "-6", "route", "add", "default", "via", &gw6])?;
        self.hosts.push((name.to_owned(), IpAddr::V4(ip4)));
        self.write_hosts()?;
        Ok(Pod {
            name: name.to_owned(),
            netns,
            ip: ip4,
            ip6,
        })
    }

    /// Names a service by its VIP in every pod's `/etc/hosts` (short name
    /// and `<name>.default.svc.cluster.local`), as cluster DNS would.
    ///
    /// # Errors
    /// When a hosts file cannot be written.
    pub fn service(&mut self, name: &str, vip: IpAddr) -> anyhow::Result<()> {
        self.hosts.push((name.to_owned(), vip));
        self.write_hosts()
    }

    fn write_hosts(&self) -> anyhow::Result<()> {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for (name, addr) in &self.hosts {
            text.push_str(&format!("{addr} {name} {name}.default.svc.cluster.local\n"));
        }
        for netns in &self.pods {
            let dir = etc_dir(netns);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let file = dir.join("hosts");
            std::fs::write(&file, &text).with_context(|| format!("write {}", file.display()))?;
        }
        Ok(())
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
/// files. Never fails (it runs in `Drop`, maybe while unwinding).
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

/// Removes namespaces left by processes that died before their bed's
/// `Drop`: those with this module's prefix whose process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && matches!(PathBuf::from("/proc").join(pid).try_exists(), Ok(false)) {
            remove(&name);
        }
    }
}

/// Moves the calling thread into network namespace `netns` (an `ip netns`
/// name): sockets it opens from then on, and threads it starts, belong there.
///
/// # Errors
/// When the namespace does not exist or `setns` is refused.
pub fn enter_netns(netns: &str) -> anyhow::Result<()> {
    let path = Path::new(NETNS_DIR).join(netns);
    let ns = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("enter network namespace {netns}"))
}

/// Runs `f` on a thread inside network namespace `netns` and returns what
/// it returns: sockets it opens belong to that namespace and stay there.
///
/// # Errors
/// When the namespace cannot be entered.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(netns)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread in {netns} panicked"))?
    })
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
    /// Its IPv6 address (the demo's pods speak IPv4; the tests use both).
    #[allow(dead_code)]
    pub ip6: Ipv6Addr,
}

impl Pod {
    /// `program` run inside the pod as root (`ip netns exec`, which also
    /// puts the pod's `/etc/hosts` in place, and then execs `program`, so
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// `program` run inside the pod as `uid`/`gid` with no supplementary
    /// groups (util-linux `setpriv`), as a container's user would.
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"])
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread inside the pod's network namespace.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.netns, f)
    }
}
