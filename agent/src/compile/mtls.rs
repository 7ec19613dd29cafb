//! PeerAuthentication → the inbound mTLS mode, resolved with Istio's
//! precedence: a workload policy (selector) over the namespace's over the
//! mesh's (root namespace); UNSET inherits; nothing at all is PERMISSIVE.
//! `portLevelMtls` (workload policies only) overrides for the app's port.

use super::bootstrap::Agent;
use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::config::security::PeerAuthenticationSpec;
use crate::model::MtlsMode;

fn parse(mode: Option<&str>) -> Result<Option<MtlsMode>, String> {
    match mode {
        None | Some("UNSET") => Ok(None),
        Some("STRICT") => Ok(Some(MtlsMode::Strict)),
        Some("PERMISSIVE") => Ok(Some(MtlsMode::Permissive)),
        Some("DISABLE") => Ok(Some(MtlsMode::Disable)),
        Some(other) => Err(format!(
            "unknown mode {other:?} (UNSET, DISABLE, PERMISSIVE, STRICT)"
        )),
    }
}

/// The mode for the workload's port `port`.
pub(super) fn inbound_mode(
    docs: &[Document<PeerAuthenticationSpec>],
    boot: &Agent,
    port: u16,
    diags: &mut Diagnostics,
) -> MtlsMode {
    let identity = &boot.identity;
    let (mut workload, mut namespace, mut mesh) = (None, None, None);
    for doc in docs {
        let loc = &doc.location;
        let spec = &doc.spec;
        let mode = match parse(spec.mtls.as_ref().and_then(|m| m.mode.as_deref())) {
            Ok(mode) => mode,
            Err(msg) => {
                diags.error(loc, Some("spec.mtls.mode".into()), msg);
                continue;
            }
        };
        let mut port_mode = None;
        for (port_number, m) in &spec.port_level_mtls {
            match parse(m.mode.as_deref()) {
                Ok(m) if u32::from(port) == *port_number => port_mode = m,
                Ok(_) => {}
                Err(msg) => diags.error(
                    loc,
                    Some(format!("spec.portLevelMtls.{port_number}.mode")),
                    msg,
                ),
            }
        }
        let policy_ns = doc
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(&identity.namespace);
        let slot = match &spec.selector {
            Some(selector)
                if policy_ns == identity.namespace && selector.matches(&identity.labels) =>
            {
                &mut workload
            }
            Some(_) => continue,
            None if policy_ns == identity.namespace => &mut namespace,
            None if policy_ns == boot.root_namespace => &mut mesh,
            None => continue,
        };
        if slot.is_some() {
            diags.warn(
                &doc.location,
                None,
                "another PeerAuthentication of the same scope applies; the first one wins",
            );
            continue;
        }
        *slot = Some(port_mode.or(mode));
    }
    let mode = [workload, namespace, mesh]
        .into_iter()
        .flatten()
        .flatten()
        .next()
        .unwrap_or(MtlsMode::Permissive);
    if mode == MtlsMode::Strict && boot.has_identity {
        return mode;
    }
    if mode == MtlsMode::Strict {
        let first = docs.first().map(|d| d.location.clone());
        if let Some(loc) = first {
            let msg = "STRICT mTLS applies to this workload but the Agent has no spec.identity to serve TLS with";
            diags.error(&loc, Some("spec.mtls.mode".into()), msg);
        }
    }
    mode
}
