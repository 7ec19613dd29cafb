//! Which spans a service's numbers count. By default the requests it
//! served: its SERVER spans, as Istio's `reporter="destination"` and
//! Jaeger's Monitor tab count them. The calls it made are the labelled
//! "outbound" view: its CLIENT spans, less retry attempts (spans carrying
//! `http.request.resend_count`), so a call retried twice is one call, and
//! less mirrored copies (spans carrying `tracemesh.mirror`, a shadow the
//! caller never waits for), as Istio's `reporter="source"` counts it. A
//! span kind, or every span, can be asked for by name.

use serde::Serialize;
use tracemesh_collector::outcome::{MIRROR, RESEND_COUNT};
use tracemesh_collector::store::{Condition, SpanQuery};

use crate::jaeger::model::{kind_from_name, kind_name};

/// OTLP `SPAN_KIND_SERVER`.
const SERVER: i32 = 2;
/// OTLP `SPAN_KIND_CLIENT`.
const CLIENT: i32 = 3;

/// Which of a service's spans are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Requests served: SERVER spans (the default).
    #[default]
    Inbound,
    /// Calls made: CLIENT spans that are neither retry attempts nor
    /// mirrored copies.
    Outbound,
    /// Spans of one OTLP kind, retry attempts included.
    Kind(i32),
    /// Every span, whatever its kind.
    All,
}

/// What an answer counted, said with the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counted {
    /// The view's name (`inbound`, `outbound`, a kind, `all`).
    pub view: String,
    /// The spans counted, in words.
    pub spans: String,
}

impl View {
    /// The view named `name`: `inbound` (or `server`), `outbound`, `all`,
    /// or a span kind (`client`, `producer`, `consumer`, `internal`,
    /// `unspecified`). `None` for another name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "inbound" | "server" => Some(Self::Inbound),
            "outbound" => Some(Self::Outbound),
            "all" | "any" => Some(Self::All),
            "unspecified" => Some(Self::Kind(0)),
            other => kind_from_name(other).map(Self::Kind),
        }
    }

    /// Its name.
    pub fn name(self) -> String {
        match self {
            Self::Inbound => "inbound".into(),
            Self::Outbound => "outbound".into(),
            Self::All => "all".into(),
            Self::Kind(0) => "unspecified".into(),
            Self::Kind(kind) => kind_name(kind).into(),
        }
    }

    /// Restricts `query` to the spans this view counts.
    pub fn apply(self, query: &mut SpanQuery) {
        match self {
            Self::Inbound => query.kind = Some(SERVER),
            Self::Outbound => {
                query.kind = Some(CLIENT);
                // Neither a retry attempt nor a mirrored copy is a call.
                query
                    .conditions
                    .push(Condition::Not(Box::new(Condition::Any(vec![
                        Condition::HasTag(RESEND_COUNT.to_owned()),
                        Condition::HasTag(MIRROR.to_owned()),
                    ]))));
            }
            Self::Kind(kind) => query.kind = Some(kind),
            Self::All => {}
        }
    }

    /// What it counts, for `service` (or every service).
    pub fn counted(self, service: Option<&str>) -> Counted {
        let whose = service.map_or_else(|| "every service".to_owned(), str::to_owned);
        let spans = match self {
            Self::Inbound => format!(
                "requests {whose} served: its SERVER spans (Istio's reporter=\"destination\")"
            ),
            Self::Outbound => format!(
                "calls {whose} made: its CLIENT spans, retry attempts and mirrored copies left out (Istio's reporter=\"source\")"
            ),
            Self::Kind(kind) => format!(
                "every {} span of {whose}, retry attempts and mirrored copies included",
                match kind_name(kind) {
                    "" => "UNSPECIFIED".to_owned(),
                    name => name.to_uppercase(),
                }
            ),
            Self::All => format!("every span of {whose}, of every kind"),
        };
        Counted {
            view: self.name(),
            spans,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_server_is_inbound() {
        for name in [
            "inbound",
            "outbound",
            "all",
            "client",
            "producer",
            "consumer",
            "internal",
            "unspecified",
        ] {
            assert_eq!(View::parse(name).unwrap().name(), name);
        }
        assert_eq!(View::parse("server"), Some(View::Inbound));
        assert_eq!(View::parse("sideways"), None);
        let mut query = SpanQuery::default();
        View::Outbound.apply(&mut query);
        assert_eq!(query.kind, Some(CLIENT));
        assert_eq!(
            query.conditions,
            vec![Condition::Not(Box::new(Condition::Any(vec![
                Condition::HasTag(RESEND_COUNT.to_owned()),
                Condition::HasTag(MIRROR.to_owned()),
            ])))]
        );
    }
}
