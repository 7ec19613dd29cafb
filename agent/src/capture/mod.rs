//! Transparent capture (DESIGN §2 "Listeners and capture"): the building
//! blocks the listeners use once `tracemesh iptables` redirects a pod's
//! TCP to them — where each connection was going ([`original_dst`]) and
//! what it speaks ([`sniff`], [`detect`]). Where it goes next is the
//! snapshot's [`crate::model::capture`] map.

#[cfg(target_os = "linux")]
pub mod detect;
#[cfg(target_os = "linux")]
pub mod original_dst;
pub mod sniff;

use std::net::{Ipv4Addr, Ipv6Addr};

/// The source address the agent binds when it delivers a captured inbound
/// connection to the application at the pod's own address: `tracemesh
/// iptables` leaves connections from it uncaptured, so the delivery is not
/// redirected back to the agent (Istio's inbound passthrough address).
pub const INBOUND_PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// [`INBOUND_PASSTHROUGH_V4`] for IPv6; `tracemesh iptables` adds it to `lo`.
pub const INBOUND_PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
