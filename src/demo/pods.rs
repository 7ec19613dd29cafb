//! `tracemesh demo --pods`: Bookinfo as it runs on a node. Every workload
//! is a pod — a network namespace of its own (`crate::pods`) — where
//! `tracemesh iptables` captures its traffic, the application runs as its
//! own process (`tracemesh demo-app`) under its own uid and calls the
//! others by plain service URLs (`http://reviews:9080/…`, `mongodb:27017`)
//! that the pod's `/etc/hosts` resolves to service VIPs, and a
//! `tracemesh agent` runs beside it under uid 1337 in capture mode.
//!
//! The collector stays in this process, in the machine's namespace; the
//! agents reach it through a relay on the hub's address. The load runs
//! from the hub, as a client outside the mesh calling productpage's pod,
//! and a relay on loopback lets a browser do the same.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::config::{AgentConfig, Endpoints, Vips};
use super::scenario::Scenario;
use super::topology::{WORKLOADS, Workload, service_port};
use crate::pods::{Bed, GATEWAY, Pod};

/// The agent's uid and gid (Istio's 1337): `tracemesh iptables` leaves its
/// connections alone.
pub const PROXY_UID: u32 = 1337;
/// The applications' uid and gid: anything but the proxy's.
pub const APP_UID: u32 = 1000;

/// What `--pods` needs on `PATH` besides root.
const PROGRAMS: [&str; 4] = ["ip", "iptables-restore", "iptables-save", "setpriv"];

/// How long a pod's agent and application may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an agent may take to drain and flush its spans when stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Says why `--pods` cannot run here, or nothing when it can.
///
/// # Errors
/// Not root, or iproute2, iptables or util-linux missing.
pub fn check() -> anyhow::Result<()> {
    match crate::pods::cannot_run(&PROGRAMS) {
        None => Ok(()),
        Some(why) => bail!(
            "--pods: {why}. It makes network namespaces and iptables rules, so it needs \
             root (sudo tracemesh demo --pods) and iproute2, iptables and util-linux's \
             setpriv; `tracemesh demo` without --pods needs none of that"
        ),
    }
}

/// One workload's pod and its two processes.
struct Running {
    workload: Workload,
    pod: Pod,
    app: Child,
    agent: Child,
}

/// Bookinfo in pods. Dropping it (also on an error or a panic) kills what
/// still runs and removes every namespace, with its rules and hosts file.
pub struct PodMesh {
    workloads: Vec<Running>,
    relays: Vec<JoinHandle<()>>,
    /// The runtime whose threads live in the hub (they connect to pods).
    hub_runtime: Option<Runtime>,
    /// Where a browser reaches productpage: loopback, relayed into its pod.
    pub productpage: SocketAddr,
    /// Where the load reaches productpage from the hub: the ingress
    /// gateway's Bookinfo port there.
    pub productpage_pod: SocketAddr,
    /// The ingress gateway, in the hub (the load enters through it).
    gateway: Option<super::roles::Running<tracemesh_agent::GatewayAddresses>>,
    /// Each workload's agent admin address (reachable from the hub).
    pub admins: Vec<(&'static str, SocketAddr)>,
    // Last: dropped after the processes are gone.
    bed: Bed,
}

impl PodMesh {
    /// Makes the pods and starts every workload's application and agent,
    /// agents exporting to `otlp` (the collector, in this namespace),
    /// configs written under `dir`.
    ///
    /// # Errors
    /// When a namespace, rule or process cannot be made or does not come
    /// up; what was made is removed first.
    /// `interrupted` turns true on Ctrl-C or SIGTERM: starting stops there,
    /// and what was made is removed.
    pub fn start(
        runtime: &Runtime,
        dir: &Path,
        otlp: SocketAddr,
        scenario: Option<Scenario>,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<Self> {
        check()?;
        let exe = std::env::current_exe().context("find the tracemesh binary")?;
        let mut bed = Bed::new().context("make the pods' hub")?;
        let mut vips = Vips::new();
        for workload in WORKLOADS {
            if !vips.contains_key(workload.service) {
                let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10 + vips.len() as u8));
                vips.insert(workload.service, vip);
                bed.service(workload.service, vip)?;
            }
        }
        let mut pods = Vec::new();
        let mut endpoints = Endpoints::new();
        for workload in WORKLOADS {
            let pod = bed.pod(workload.name)?;
            endpoints.entry(workload.service).or_default().push((
                workload.version,
                SocketAddr::new(IpAddr::V4(pod.ip), service_port(workload.service)),
            ));
            pods.push((workload, pod));
        }

        // The agents' spans: the hub's address, relayed to the collector.
        let hub = bed.hub().to_owned();
        let otlp_listener = crate::pods::in_netns(&hub, || {
            std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(GATEWAY), 0))
        })?
        .context("listen for the agents' spans on the hub")?;
        let relayed_otlp = otlp_listener.local_addr()?;
        let mut relays = Vec::new();
        let listener = {
            let _guard = runtime.enter();
            otlp_listener.set_nonblocking(true)?;
            TcpListener::from_std(otlp_listener)?
        };
        relays.push(runtime.spawn(relay(listener, otlp)));

        // The agents (uid 1337) read their configs.
        if let Some(data_dir) = dir.parent() {
            make_readable(data_dir)?;
        }
        make_readable(dir)?;
        let productpage_pod = pods
            .iter()
            .find(|(w, _)| w.name == "productpage-v1")
            .map(|(w, p)| SocketAddr::new(IpAddr::V4(p.ip), service_port(w.service)))
            .ok_or_else(|| anyhow!("no productpage"))?;
        let hub_runtime = crate::pods::in_netns(&hub, || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("hub")
                .enable_all()
                .build()
        })?
        .context("start the hub's runtime")?;
        let browser = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("listen for productpage on loopback")?;
        let productpage = browser.local_addr()?;

        let mut mesh = Self {
            workloads: Vec::new(),
            relays,
            hub_runtime: Some(hub_runtime),
            productpage,
            productpage_pod,
            gateway: None,
            admins: Vec::new(),
            bed,
        };
        for (workload, pod) in pods {
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted while starting the pods");
            }
            let yaml = AgentConfig {
                workload: &workload,
                app: SocketAddr::new(IpAddr::V4(pod.ip), service_port(workload.service)),
                otlp: relayed_otlp,
                endpoints: &endpoints,
                scenario,
                vips: Some(&vips),
            }
            .to_yaml();
            let config = dir.join(format!("{}.yaml", workload.name));
            std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
            make_readable(&config)?;
            let running = start_pod(&exe, workload, pod, &config, scenario)?;
            mesh.admins.push((
                workload.name,
                SocketAddr::new(IpAddr::V4(running.pod.ip), 15000),
            ));
            mesh.workloads.push(running);
        }
        for running in &mut mesh.workloads {
            wait_ready(&hub, running, interrupted)?;
        }
        // The ingress gateway in the hub, in front of productpage's pod:
        // the load and the browser's relay enter through it.
        let gateway = super::mesh::start_gateway(
            dir,
            IpAddr::V4(GATEWAY),
            relayed_otlp,
            &endpoints,
            Some(hub.clone()),
        )?;
        let entry = gateway
            .addresses
            .port(super::mesh::GATEWAY_PORT)
            .ok_or_else(|| anyhow!("the gateway has no Bookinfo port"))?;
        mesh.admins
            .push(("istio-ingressgateway", gateway.addresses.admin));
        mesh.gateway = Some(gateway);
        mesh.productpage_pod = entry;
        let browser = browser.into_std()?;
        if let Some(hub_runtime) = &mesh.hub_runtime {
            mesh.relays.push(hub_runtime.spawn(async move {
                match TcpListener::from_std(browser) {
                    Ok(listener) => relay(listener, entry).await,
                    Err(error) => tracing::warn!(%error, "productpage relay"),
                }
            }));
        }
        Ok(mesh)
    }

    /// The hub's namespace: where the load runs from.
    pub fn hub(&self) -> &str {
        self.bed.hub()
    }

    /// Stops every agent (callers first, each draining and flushing its
    /// spans), then the applications, then removes the pods.
    ///
    /// # Errors
    /// When an agent did not stop cleanly in time.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        if let Some(gateway) = self.gateway.take()
            && let Err(error) = gateway.stop()
        {
            first_error.get_or_insert(error);
        }
        for running in self.workloads.iter_mut().rev() {
            if let Err(error) = terminate(
                &mut running.agent,
                &format!("agent {}", running.workload.name),
            ) {
                first_error.get_or_insert(error);
            }
        }
        for running in &mut self.workloads {
            let _ = terminate(&mut running.app, running.workload.name);
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for PodMesh {
    fn drop(&mut self) {
        for running in &mut self.workloads {
            let _ = running.agent.kill();
            let _ = running.agent.wait();
            let _ = running.app.kill();
            let _ = running.app.wait();
        }
        for relay in &self.relays {
            relay.abort();
        }
        if let Some(runtime) = self.hub_runtime.take() {
            runtime.shutdown_background();
        }
        // Then `bed` drops: the namespaces go, and their rules with them.
    }
}

/// Installs the pod's rules, then starts its application and its agent.
fn start_pod(
    exe: &Path,
    workload: Workload,
    pod: Pod,
    config: &Path,
    scenario: Option<Scenario>,
) -> anyhow::Result<Running> {
    let out = pod
        .command(exe)
        .arg("iptables")
        .stdin(Stdio::null())
        .output()
        .context("run tracemesh iptables")?;
    if !out.status.success() {
        bail!(
            "tracemesh iptables in pod {}: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut app = pod.command_as(APP_UID, APP_UID, exe);
    app.args(["demo-app", "--workload", workload.name]);
    if let Some(name) = scenario.and_then(|s| clap::ValueEnum::to_possible_value(&s)) {
        app.args(["--scenario", name.get_name()]);
    }
    let app = app
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}'s application", workload.name))?;
    let agent = pod
        .command_as(PROXY_UID, PROXY_UID, exe)
        .args(["agent", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn();
    let agent = match agent {
        Ok(agent) => agent,
        Err(error) => {
            let mut app = app;
            let _ = app.kill();
            let _ = app.wait();
            return Err(error).with_context(|| format!("start {}'s agent", workload.name));
        }
    };
    Ok(Running {
        workload,
        pod,
        app,
        agent,
    })
}

/// Waits until the pod's application and agent listen (the application
/// checked from inside the pod, the agent's admin port from the hub).
fn wait_ready(hub: &str, running: &mut Running, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let app = SocketAddr::new(
        IpAddr::V4(running.pod.ip),
        service_port(running.workload.service),
    );
    let admin = SocketAddr::new(IpAddr::V4(running.pod.ip), 15000);
    let deadline = Instant::now() + READY_TIMEOUT;
    let name = running.workload.name;
    loop {
        for (what, child) in [
            ("application", &mut running.app),
            ("agent", &mut running.agent),
        ] {
            if let Some(status) = child.try_wait()? {
                bail!("{name}'s {what} exited with {status} while starting");
            }
        }
        let connect =
            |addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        let up =
            running.pod.enter(|| connect(app))? && crate::pods::in_netns(hub, || connect(admin))?;
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} not listening after {READY_TIMEOUT:?}");
        }
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted while starting {name}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then waits (SIGKILL past [`STOP_TIMEOUT`]).
fn terminate(child: &mut Child, name: &str) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            // SIGTERM's own status is a clean stop too.
            return if status.success() || status.code().is_none() {
                Ok(())
            } else {
                Err(anyhow!("{name} exited with {status}"))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not stop within {STOP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lets other users (the agents' uid) read `path` (and list it, when it
/// is a directory).
fn make_readable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mode = meta.permissions().mode();
    let want = mode | if meta.is_dir() { 0o005 } else { 0o004 };
    if want != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))
            .with_context(|| format!("let the agents (uid {PROXY_UID}) read {}", path.display()))?;
    }
    Ok(())
}

/// Accepts on `listener` and joins each connection to `to`, both ways.
async fn relay(listener: TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
