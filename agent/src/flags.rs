//! Envoy's response flags: the short codes operators already read in access
//! logs, metrics (`response_flags`) and span attributes.

use std::borrow::Cow;
use std::fmt;

/// A set of response flags, in the order they were set: Envoy (since
/// 1.30) keeps a request's flags as a list and writes them in that order
/// (`URX,UF`: the retries given up, then the failure that ended the last
/// attempt), and the access log and the `response_flags` metric label show
/// them so; dashboards and alerts match the label's exact value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags {
    /// The flags set (a bit per flag, by [`NAMES`]' index).
    set: u32,
    /// The flags in the order they were set: 5-bit slots, the first in the
    /// low bits, each a flag's bit index plus one (0: no more). Twelve fit
    /// (a request sets three or four); any past them render after, in bit
    /// order.
    order: u64,
}

/// Bits per slot of [`ResponseFlags::order`].
const SLOT: u32 = 5;
/// Slots in [`ResponseFlags::order`].
const SLOTS: u32 = u64::BITS / SLOT;

/// Each flag's code, by its bit's index.
const NAMES: [&str; 20] = [
    "NR", "UF", "UH", "UO", "UT", "URX", "UC", "DC", "RL", "RBAC", "FI", "DI", "NC", "UR", "DPE",
    "SI", "UAEX", "UPE", "OM", "DT",
];

impl ResponseFlags {
    /// No flag.
    pub const NONE: Self = Self { set: 0, order: 0 };
    /// No route matched the request.
    pub const NO_ROUTE: Self = Self::flag(0);
    /// The upstream connection could not be opened.
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self::flag(1);
    /// The cluster has no healthy endpoint.
    pub const NO_HEALTHY_UPSTREAM: Self = Self::flag(2);
    /// A connection-pool or circuit-breaker limit overflowed.
    pub const UPSTREAM_OVERFLOW: Self = Self::flag(3);
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: Self = Self::flag(4);
    /// Retries were exhausted.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self::flag(5);
    /// The upstream connection closed before the response.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self::flag(6);
    /// The client went away before the response was complete.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self::flag(7);
    /// Rate limited.
    pub const RATE_LIMITED: Self = Self::flag(8);
    /// Denied by an AuthorizationPolicy.
    pub const RBAC_DENIED: Self = Self::flag(9);
    /// Aborted by fault injection.
    pub const FAULT_ABORT: Self = Self::flag(10);
    /// Delayed by fault injection.
    pub const FAULT_DELAY: Self = Self::flag(11);
    /// The route's destination names no known cluster.
    pub const NO_CLUSTER_FOUND: Self = Self::flag(12);
    /// The upstream reset the stream after the response began.
    pub const UPSTREAM_REMOTE_RESET: Self = Self::flag(13);
    /// The client broke the HTTP protocol (a malformed body, an ambiguous
    /// request).
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self::flag(14);
    /// The stream did nothing for `streamIdleTimeout` (Envoy's SI).
    pub const STREAM_IDLE_TIMEOUT: Self = Self::flag(15);
    /// The external authorizer (a CUSTOM AuthorizationPolicy) denied the
    /// request, or failed and `failOpen` is false (Envoy's UAEX).
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: Self = Self::flag(16);
    /// The upstream broke the HTTP protocol: a malformed response head, a
    /// transfer coding the agent cannot pass on, a body cut short of its
    /// framing (Envoy's UPE).
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self::flag(17);
    /// The agent stopped reading the stream to bound what it holds: one of
    /// more stalled HTTP/2 bodies, their readers taking nothing, than
    /// `spec.overload.maxStalledStreams` allows (Envoy's OM, "overload
    /// manager terminated the request").
    pub const OVERLOAD_MANAGER: Self = Self::flag(18);
    /// A proxied TCP connection reached its cluster's
    /// `maxConnectionDuration` and was closed (Envoy's DT).
    pub const DURATION_TIMEOUT: Self = Self::flag(19);

    /// The one flag of bit `index`.
    const fn flag(index: u32) -> Self {
        Self {
            set: 1 << index,
            order: index as u64 + 1,
        }
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.set == 0
    }

    /// Whether a flag marks a failure (a fault delay alone does not).
    pub fn is_failure(self) -> bool {
        self.set & !Self::FAULT_DELAY.set != 0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.set & other.set == other.set
    }

    /// These flags without those of `other` (in their order).
    pub const fn except(self, other: Self) -> Self {
        let mut kept = Self::NONE;
        let mut order = self.order;
        while let Some(index) = slot(order) {
            if other.set & (1 << index) == 0 {
                kept = kept.with(Self::flag(index));
            }
            order >>= SLOT;
        }
        kept
    }

    /// These flags, then those of `other` not already set (in `other`'s
    /// order).
    pub const fn with(self, other: Self) -> Self {
        if other.set & !self.set == 0 {
            return self; // nothing new (the common case: no flag at all)
        }
        let mut flags = self;
        let mut order = other.order;
        while let Some(index) = slot(order) {
            let bit = 1 << index;
            if flags.set & bit == 0 {
                let slots = flags.slots();
                if slots < SLOTS {
                    flags.order |= (index as u64 + 1) << (slots * SLOT);
                }
                flags.set |= bit;
            }
            order >>= SLOT;
        }
        flags
    }

    /// The bit indices of the flags in `order`, first set first.
    fn in_order(self) -> impl Iterator<Item = u32> {
        let mut order = self.order;
        std::iter::from_fn(move || {
            let index = slot(order)?;
            order >>= SLOT;
            Some(index)
        })
    }

    /// Slots taken in `order`.
    const fn slots(self) -> u32 {
        (u64::BITS - self.order.leading_zeros()).div_ceil(SLOT)
    }

    /// Adds the flags of `other` after those set so far.
    pub fn insert(&mut self, other: Self) {
        *self = self.with(other);
    }

    /// Envoy's rendering: `-` for none, else codes joined by commas in the
    /// order they were set.
    pub fn as_str(self) -> Cow<'static, str> {
        // (No flag, or one: nearly every request; no order to read.)
        match self.set.count_ones() {
            0 => return Cow::Borrowed("-"),
            1 => return Cow::Borrowed(NAMES[self.set.trailing_zeros() as usize]),
            _ => {}
        }
        let mut ordered = 0u32;
        let mut names: Vec<&str> = self
            .in_order()
            .map(|i| {
                ordered |= 1 << i;
                NAMES[i as usize]
            })
            .collect();
        // (Flags past the slots, in bit order.)
        let rest = (0..NAMES.len()).filter(|&i| self.set & !ordered & (1 << i) != 0);
        names.extend(rest.map(|i| NAMES[i]));
        Cow::Owned(names.join(","))
    }
}

/// The bit index in the first slot of `order`, if any.
const fn slot(order: u64) -> Option<u32> {
    match (order & ((1 << SLOT) - 1)) as u32 {
        0 => None,
        held => Some(held - 1),
    }
}

/// `a | b` is [`ResponseFlags::with`]: `b`'s flags after `a`'s, so it
/// does not commute where the order shows (`==`, the rendering).
impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_envoy() {
        assert_eq!(ResponseFlags::NONE.as_str(), "-");
        assert_eq!(ResponseFlags::NO_ROUTE.as_str(), "NR");
        let both =
            ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED | ResponseFlags::UPSTREAM_CONNECT_FAILURE;
        assert_eq!(both.as_str(), "URX,UF");
        assert!(both.contains(ResponseFlags::UPSTREAM_CONNECT_FAILURE));
    }

    /// Flags render in the order they were set, each once, as Envoy
    /// writes them; removing one keeps the others' order.
    #[test]
    fn flags_keep_the_order_they_were_set_in() {
        let mut flags = ResponseFlags::FAULT_DELAY;
        flags.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
        flags.insert(ResponseFlags::FAULT_DELAY);
        assert_eq!(flags.as_str(), "DI,URX,UT");
        let without = flags.except(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(without.as_str(), "DI,UT");
        assert_eq!(without.with(flags).as_str(), "DI,UT,URX");
        assert_ne!(flags, without.with(flags), "the order is the label");
        // Every flag, last first: the first twelve in their order, the rest
        // after them in bit order.
        let all = (0..NAMES.len() as u32)
            .rev()
            .fold(ResponseFlags::NONE, |all, i| {
                all.with(ResponseFlags::flag(i))
            });
        assert!((0..NAMES.len() as u32).all(|i| all.contains(ResponseFlags::flag(i))));
        let mut want: Vec<&str> = NAMES.iter().rev().take(SLOTS as usize).copied().collect();
        want.extend(&NAMES[..NAMES.len() - SLOTS as usize]);
        assert_eq!(all.as_str(), want.join(","));
    }
}
