//! Starts Bookinfo: each application on a free port, then its sidecar
//! (callees first, so each sidecar's registry can name the sidecars it
//! calls), then the application's calls wired to its sidecar's outbound
//! listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tracemesh_agent::{AgentAddresses, GatewayAddresses};

use super::bookinfo::{self, App};
use super::config::{AgentConfig, Endpoints, gateway_yaml};
use super::roles::{self, Running};
use super::scenario::{self, Scenario};
use super::topology::{WORKLOADS, Workload};

/// One workload: its application's task and its sidecar's thread.
pub struct Sidecar {
    /// The workload.
    pub workload: Workload,
    agent: Running<AgentAddresses>,
    task: JoinHandle<()>,
}

impl Sidecar {
    /// Where the sidecar listens.
    pub fn addresses(&self) -> &AgentAddresses {
        &self.agent.addresses
    }
}

/// The running mesh, in start order.
pub struct Mesh {
    /// Every workload, callees first.
    pub sidecars: Vec<Sidecar>,
    /// The ingress gateway in front of productpage, started last.
    pub gateway: Option<Running<GatewayAddresses>>,
}

impl Mesh {
    /// Starts every workload on `runtime`, sidecars exporting spans to
    /// `otlp`, config files written under `dir`.
    pub fn start(
        runtime: &Runtime,
        dir: &Path,
        otlp: SocketAddr,
        scenario: Option<Scenario>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut mesh = Self {
            sidecars: Vec::new(),
            gateway: None,
        };
        let mut endpoints = Endpoints::new();
        for workload in WORKLOADS {
            match mesh.start_one(runtime, dir, otlp, scenario, workload, &endpoints) {
                Ok(sidecar) => {
                    endpoints
                        .entry(workload.service)
                        .or_default()
                        .push((workload.version, sidecar.addresses().inbound));
                    mesh.sidecars.push(sidecar);
                }
                Err(error) => {
                    // Leave nothing running behind the error.
                    let _ = mesh.stop();
                    return Err(error);
                }
            }
        }
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        match start_gateway(dir, loopback, otlp, &endpoints, None) {
            Ok(gateway) => mesh.gateway = Some(gateway),
            Err(error) => {
                let _ = mesh.stop();
                return Err(error);
            }
        }
        Ok(mesh)
    }

    /// Where the ingress gateway's port 8080 (Bookinfo's) listens: the
    /// article's `$GATEWAY_URL`.
    pub fn gateway_url(&self) -> Option<SocketAddr> {
        self.gateway.as_ref()?.addresses.port(GATEWAY_PORT)
    }

    fn start_one(
        &self,
        runtime: &Runtime,
        dir: &Path,
        otlp: SocketAddr,
        scenario: Option<Scenario>,
        workload: Workload,
        endpoints: &Endpoints,
    ) -> anyhow::Result<Sidecar> {
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("bind an application port")?;
        let app = listener.local_addr()?;
        let yaml = AgentConfig {
            workload: &workload,
            app,
            otlp,
            endpoints,
            scenario,
            vips: None,
        }
        .to_yaml();
        let config = dir.join(format!("{}.yaml", workload.name));
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let path = config.clone();
        let agent = roles::spawn(&format!("agent {}", workload.name), move |stop, ready| {
            tracemesh_agent::run_until(&path, stop, ready).map_err(anyhow::Error::from)
        })?;
        let addresses = &agent.addresses;
        let application = App::new(
            workload,
            scenario::behaviour(scenario, &workload),
            Some(addresses.outbound),
            addresses.outbound_tcp.first().map(ToString::to_string),
        );
        let task = runtime.spawn(bookinfo::serve(listener, Arc::new(application)));
        Ok(Sidecar {
            workload,
            agent,
            task,
        })
    }

    /// Stops every sidecar (callers first, so no call is cut by its
    /// callee's sidecar going away), each flushing its spans, then the
    /// applications.
    pub fn stop(self) -> anyhow::Result<()> {
        let mut first_error = None;
        if let Some(gateway) = self.gateway
            && let Err(error) = gateway.stop()
        {
            first_error.get_or_insert(error);
        }
        for sidecar in self.sidecars.into_iter().rev() {
            if let Err(error) = sidecar.agent.stop() {
                first_error.get_or_insert(error);
            }
            sidecar.task.abort();
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The port Bookinfo's Gateway serves (`bookinfo-gateway`'s server).
pub const GATEWAY_PORT: u16 = 8080;

/// Starts the ingress gateway on Bookinfo's gateway resources, its config
/// written beside the sidecars', listening on `listen` — inside network
/// namespace `netns` when given (its thread enters it; the gateway's
/// workers, started from there, live in it too).
pub fn start_gateway(
    dir: &Path,
    listen: std::net::IpAddr,
    otlp: SocketAddr,
    endpoints: &Endpoints,
    netns: Option<String>,
) -> anyhow::Result<Running<GatewayAddresses>> {
    let config = dir.join("istio-ingressgateway.yaml");
    std::fs::write(&config, gateway_yaml(listen, otlp, endpoints))
        .with_context(|| format!("write {}", config.display()))?;
    roles::spawn("gateway istio-ingressgateway", move |stop, ready| {
        if let Some(netns) = &netns {
            crate::pods::enter_netns(netns)?;
        }
        tracemesh_agent::run_gateway_until(&config, stop, ready).map_err(anyhow::Error::from)
    })
}
