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
use tracemesh_agent::AgentAddresses;

use super::bookinfo::{self, App};
use super::config::{AgentConfig, Endpoints};
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
        Ok(mesh)
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

    /// The sidecar of the workload named `name`.
    pub fn sidecar(&self, name: &str) -> Option<&Sidecar> {
        self.sidecars.iter().find(|s| s.workload.name == name)
    }

    /// Stops every sidecar (callers first, so no call is cut by its
    /// callee's sidecar going away), each flushing its spans, then the
    /// applications.
    pub fn stop(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for sidecar in self.sidecars.into_iter().rev() {
            if let Err(error) = sidecar.agent.stop() {
                first_error.get_or_insert(error);
            }
            sidecar.task.abort();
        }
        first_error.map_or(Ok(()), Err)
    }
}
