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
