//! Service dependency edges, linked at ingest so the query service can
//! count them with one terms aggregation instead of joining spans.
//!
//! A span whose parent belongs to another service is a call from the
//! parent's service to the span's. Parent and child arrive in any order
//! (each process exports on its own schedule, children usually first), so
//! the indexer remembers recent spans and children still waiting for their
//! parent; the edge is written on the document of whichever of the two
//! arrives second, in the `edge` field (and `edge_error` when the call
//! failed). Memory is bounded: both maps keep two generations of at most
//! [`GENERATION`] entries (waiting children counted one by one, whatever
//! parent they wait for), so a parent that arrives more than a few hundred
//! thousand spans after its child makes no edge. Service names are kept
//! the same way ([`ServiceNames`]): two generations of at most
//! [`SERVICE_GENERATION`] names, a name seen again moving to the current
//! one, so junk `service.name` values cost bounded memory and every
//! service sending now still links. A remembered span whose service was
//! aged out since makes no edge; [`EdgeLinker::take_dropped`] counts those.
//!
//! A TCP connection carries no trace context, so its CLIENT span (the
//! agent's, `network.transport` = `tcp`) never has a SERVER child: its
//! `peer.service` names the callee, as Jaeger's and Tempo's service graphs
//! name uninstrumented peers. Only TCP client spans are linked this way —
//! an HTTP client span's `peer.service` is also its SERVER child's service,
//! which links already, and would count the call twice.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tantivy::TantivyDocument;

use crate::attributes;
use crate::ids::{SpanId, TraceId};
use crate::store::document::{SpanRef, for_each_span};
use crate::store::schema::{SpanFields, names::EDGE_SEPARATOR};
use crate::store::{PartitionId, PreparedDocs};

/// Entries per generation of each map.
const GENERATION: usize = 131_072;

/// Distinct service names per generation of [`ServiceNames`]: at most
/// twice this many are remembered.
pub(crate) const SERVICE_GENERATION: usize = 10_000;

/// A call from one service to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The parent span's service.
    pub caller: Arc<str>,
    /// The child span's service.
    pub callee: Arc<str>,
    /// The child failed, or the parent was a client span that failed
    /// (5xx or a local failure, [`crate::outcome::Outcome::Error`]; a 4xx
    /// is no failure).
    pub failed: bool,
}

/// A remembered span: service index, whether it is a client (or producer)
/// span, whether it failed.
#[derive(Debug, Clone, Copy)]
struct Seen {
    service: u32,
    client: bool,
    /// A SERVER span.
    server: bool,
    failed: bool,
}

/// Two generations of a map: inserting into a full current generation
/// drops the previous one.
struct Generations<V> {
    current: HashMap<u64, V>,
    previous: HashMap<u64, V>,
}

impl<V> Generations<V> {
    fn new() -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    fn get(&self, key: u64) -> Option<&V> {
        self.current.get(&key).or_else(|| self.previous.get(&key))
    }

    fn insert(&mut self, key: u64, value: V) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&key) {
            self.turn();
        }
        self.current.insert(key, value);
    }

    /// Starts a new generation: the previous one is dropped.
    fn turn(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

impl<T> Generations<Vec<T>> {
    /// Takes `key`'s lists out of both generations, joined: a parent's
    /// children can wait in both when a generation turned between them.
    fn take_all(&mut self, key: u64) -> Option<Vec<T>> {
        match (self.current.remove(&key), self.previous.remove(&key)) {
            (Some(mut newer), Some(older)) => {
                newer.extend(older);
                Some(newer)
            }
            (newer, older) => newer.or(older),
        }
    }
}

/// One generation of service names, both ways.
#[derive(Default)]
struct NameGeneration {
    ids: HashMap<Arc<str>, u32>,
    names: HashMap<u32, Arc<str>>,
}

impl NameGeneration {
    fn insert(&mut self, name: Arc<str>, id: u32) {
        self.names.insert(id, name.clone());
        self.ids.insert(name, id);
    }

    fn remove(&mut self, name: &str) -> Option<(Arc<str>, u32)> {
        let (name, id) = self.ids.remove_entry(name)?;
        self.names.remove(&id);
        Some((name, id))
    }
}

/// Service names by id, in two generations: a new name goes into the
/// current one, and one full of [`SERVICE_GENERATION`] names becomes the
/// previous (the names in the previous are forgotten). A name found in the
/// previous generation moves to the current one with its id, so a service
/// seen again before [`SERVICE_GENERATION`] other new names arrive keeps
/// its id, and the spans remembered with it still link. Ids are never
/// reused (a `u32` wraps after four billion names, long after any span
/// remembered with the old id was forgotten).
#[derive(Default)]
struct ServiceNames {
    current: NameGeneration,
    previous: NameGeneration,
    next: u32,
}

impl ServiceNames {
    /// The id of `service`, given one if it has none.
    fn intern(&mut self, service: &str) -> u32 {
        if let Some(id) = self.current.ids.get(service) {
            return *id;
        }
        let (name, id) = match self.previous.remove(service) {
            Some(found) => found,
            None => {
                let id = self.next;
                self.next = self.next.wrapping_add(1);
                (Arc::from(service), id)
            }
        };
        if self.current.ids.len() >= SERVICE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name, id);
        id
    }

    /// The name of the service `id`, if it is still remembered.
    fn name(&self, id: u32) -> Option<&Arc<str>> {
        self.current
            .names
            .get(&id)
            .or_else(|| self.previous.names.get(&id))
    }
}

/// A span's key in the maps: its trace and span id folded to 64 bits (a
/// collision only misplaces one edge).
fn key(trace: &TraceId, span: SpanId) -> u64 {
    let (high, low) = trace.0.split_at(8);
    let fold = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    (fold(high).rotate_left(17) ^ fold(low)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ span.as_u64()
}

/// Links parents and children across services; owned by the indexer thread.
pub struct EdgeLinker {
    fields: SpanFields,
    services: ServiceNames,
    spans: Generations<Seen>,
    waiting: Generations<Vec<Seen>>,
    found: Vec<Edge>,
    /// Children put in `waiting` since its generation began (at most
    /// [`GENERATION`] a generation, however they share parents).
    waiting_children: usize,
    /// Edges not written since the last [`EdgeLinker::take_dropped`]: a
    /// remembered span's service had been forgotten.
    dropped: u64,
}

impl EdgeLinker {
    /// A linker writing into documents of the schema whose fields are `fields`.
    pub fn new(fields: SpanFields) -> Self {
        Self {
            fields,
            services: ServiceNames::default(),
            spans: Generations::new(),
            waiting: Generations::new(),
            found: Vec::new(),
            waiting_children: 0,
            dropped: 0,
        }
    }

    /// Adds the edge from `caller` to `callee` to `out`, or counts it as
    /// dropped when either service's name has been forgotten.
    fn edge(&mut self, caller: u32, callee: u32, failed: bool, out: &mut Vec<Edge>) {
        match (self.services.name(caller), self.services.name(callee)) {
            (Some(caller), Some(callee)) => out.push(Edge {
                caller: caller.clone(),
                callee: callee.clone(),
                failed,
            }),
            _ => self.dropped += 1,
        }
    }

    /// Edges dropped since the last call because a remembered span's
    /// service name had been forgotten (more than [`SERVICE_GENERATION`]
    /// new service names arrived since it was last seen).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Remembers one span and returns the edges it completes: to its parent
    /// when that arrived before, from it to children that arrived before.
    pub fn link(&mut self, span: SpanRef<'_>, out: &mut Vec<Edge>) {
        let s = span.span;
        let (Some(trace), Some(id)) = (
            TraceId::from_bytes(&s.trace_id),
            SpanId::from_bytes(&s.span_id),
        ) else {
            return;
        };
        let service = self
            .services
            .intern(attributes::service_name(span.resource));
        let me = Seen {
            service,
            client: matches!(s.kind, 3 | 4),
            server: s.kind == 2,
            failed: crate::outcome::Outcome::of(
                s.status.as_ref().map_or(0, |st| st.code),
                attributes::get_int(&s.attributes, "http.response.status_code")
                    .and_then(|c| u16::try_from(c).ok()),
            ) == crate::outcome::Outcome::Error,
        };
        let my_key = key(&trace, id);
        // Children first: a span that names itself as parent (a Zipkin
        // shared SERVER half, see [`crate::ingest::zipkin`]) waits for the
        // CLIENT half of its own id below, not for itself.
        if let Some(children) = self.waiting.take_all(my_key) {
            let mut servers_children = Vec::new();
            for child in children {
                if me.client && child.client && child.service != me.service {
                    // A CLIENT span's child is its callee's SERVER span; a
                    // CLIENT child of another service belongs to the
                    // SERVER half of a Zipkin shared id, still to come.
                    servers_children.push(child);
                } else if child.service != me.service {
                    self.edge(
                        me.service,
                        child.service,
                        child.failed || (me.client && me.failed),
                        out,
                    );
                }
            }
            if !servers_children.is_empty() {
                self.waiting.insert(my_key, servers_children);
            }
        }
        if let Some(parent) = SpanId::from_bytes(&s.parent_span_id) {
            let parent_key = key(&trace, parent);
            // A CLIENT parent of another service for a CLIENT span: the
            // parent id is a Zipkin shared one, and the span is the SERVER
            // half's child; it waits for that half.
            let found = self
                .spans
                .get(parent_key)
                .copied()
                .filter(|p| !(p.client && me.client && p.service != me.service));
            match found {
                Some(p) if p.service != me.service => self.edge(
                    p.service,
                    me.service,
                    me.failed || (p.client && p.failed),
                    out,
                ),
                Some(_) => {}
                None => {
                    // Children waiting in the current generation count
                    // toward its size too: one parent id that never comes
                    // would otherwise gather any number of them.
                    self.waiting_children += 1;
                    if self.waiting_children > GENERATION {
                        self.waiting.turn();
                        self.waiting_children = 1;
                    }
                    match self.waiting.current.get_mut(&parent_key) {
                        Some(children) => children.push(me),
                        None => self.waiting.insert(parent_key, vec![me]),
                    }
                }
            }
        }
        if me.client
            && attributes::get_str(&s.attributes, "network.transport") == Some("tcp")
            && let Some(peer) = attributes::get_str(&s.attributes, "peer.service")
        {
            let callee = self.services.intern(peer);
            if callee != me.service {
                self.edge(me.service, callee, me.failed, out);
            }
        }
        // A shared span's SERVER half stays over its CLIENT half: spans
        // naming the id as parent are the server's children.
        let server_half = self
            .spans
            .get(my_key)
            .is_some_and(|other| other.server && me.client && other.service != me.service);
        if !server_half {
            self.spans.insert(my_key, me);
        }
    }

    /// Links every span of a batch and writes the edges into its prepared
    /// documents (which [`crate::store::SpanStore::prepare`] built in span
    /// order within each partition). Spans whose entry in `copies` (batch
    /// order) is set are exact copies of spans linked before (see
    /// [`crate::resends`]): they link nothing, so a resent call is one edge.
    pub fn annotate(
        &mut self,
        batch: &[ResourceSpans],
        docs: &mut PreparedDocs,
        partition_length: u64,
        copies: &[bool],
    ) {
        let mut next: HashMap<PartitionId, usize> = HashMap::new();
        let mut found = std::mem::take(&mut self.found);
        let mut position = 0;
        for_each_span(batch, |span| {
            let partition =
                PartitionId::containing(span.span.start_time_unix_nano, partition_length);
            let slot = next.entry(partition).or_insert(0);
            let index = *slot;
            *slot += 1;
            let copy = copies.get(position).copied().unwrap_or(false);
            position += 1;
            if copy {
                return;
            }
            self.link(span, &mut found);
            if found.is_empty() {
                return;
            }
            if let Some(doc) = docs.get_mut(&partition).and_then(|d| d.get_mut(index)) {
                add_edges(&self.fields, doc, &found);
            }
            found.clear();
        });
        self.found = found;
    }
}

/// Writes edges into a span's document.
pub fn add_edges(fields: &SpanFields, doc: &mut TantivyDocument, edges: &[Edge]) {
    for edge in edges {
        let value = format!("{}{EDGE_SEPARATOR}{}", edge.caller, edge.callee);
        if edge.failed {
            doc.add_text(fields.edge_error, &value);
        }
        doc.add_text(fields.edge, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    fn span(id: u8, parent: u8, kind: i32, failed: bool) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            kind,
            status: failed.then(|| Status {
                code: 2,
                message: String::new(),
            }),
            ..Default::default()
        }
    }

    fn link(linker: &mut EdgeLinker, service: &str, span: &Span) -> Vec<Edge> {
        let resource = Resource {
            attributes: vec![attributes::string("service.name", service)],
            ..Default::default()
        };
        let mut out = Vec::new();
        linker.link(
            SpanRef {
                resource: Some(&resource),
                resource_schema_url: "",
                scope: None,
                scope_schema_url: "",
                span,
            },
            &mut out,
        );
        out
    }

    fn edge(caller: &str, callee: &str, failed: bool) -> Edge {
        Edge {
            caller: caller.into(),
            callee: callee.into(),
            failed,
        }
    }

    #[test]
    fn links_in_either_order_once() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        // Parent first: the child's document gets the edge.
        assert!(link(&mut linker, "frontend", &span(1, 0, 2, false)).is_empty());
        assert!(link(&mut linker, "frontend", &span(2, 1, 3, false)).is_empty());
        assert_eq!(
            link(&mut linker, "cart", &span(3, 2, 2, true)),
            [edge("frontend", "cart", true)]
        );
        // Children first: the parent's document gets both edges.
        assert!(link(&mut linker, "db", &span(5, 4, 2, false)).is_empty());
        assert!(link(&mut linker, "cache", &span(6, 4, 2, false)).is_empty());
        assert!(link(&mut linker, "cart", &span(7, 4, 1, false)).is_empty());
        assert_eq!(
            link(&mut linker, "cart", &span(4, 3, 3, false)),
            [edge("cart", "db", false), edge("cart", "cache", false)]
        );
    }

    /// A span of trace `trace` with ids beyond [`span`]'s 255.
    fn numbered(trace: u32, id: u32, parent: u32) -> Span {
        let id8 = |n: u32| [n.to_le_bytes(), 0x5a5a_5a5au32.to_le_bytes()].concat();
        Span {
            trace_id: [trace.to_le_bytes(); 4].concat(),
            span_id: id8(id),
            parent_span_id: if parent == 0 { vec![] } else { id8(parent) },
            kind: 2,
            ..Default::default()
        }
    }

    /// Every order of `spans` (service, span), linked by a fresh linker:
    /// the edges each order makes.
    fn in_every_order(spans: &[(&str, Span)]) -> Vec<(Vec<usize>, Vec<Edge>)> {
        fn orders(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![Vec::new()];
            }
            let mut all = Vec::new();
            for order in orders(n - 1) {
                for at in 0..=order.len() {
                    let mut longer = order.clone();
                    longer.insert(at, n - 1);
                    all.push(longer);
                }
            }
            all
        }
        orders(spans.len())
            .into_iter()
            .map(|order| {
                let fields = SpanFields::of(&schema::build()).unwrap();
                let mut linker = EdgeLinker::new(fields);
                let mut edges: Vec<Edge> = order
                    .iter()
                    .flat_map(|&i| link(&mut linker, spans[i].0, &spans[i].1))
                    .collect();
                edges.sort_by(|a, b| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee)));
                (order, edges)
            })
            .collect()
    }

    /// Zipkin's shared span, as the Zipkin receiver stores it: the SERVER
    /// half with the CLIENT half's id, and that id as its parent. Each
    /// pair is one call, in a chain of two, whatever order the spans come
    /// in. (The server half used to replace the client half: no edge.)
    #[test]
    fn a_shared_span_is_one_call_in_any_order() {
        let client = |trace, id, parent| Span {
            kind: 3,
            ..numbered(trace, id, parent)
        };
        // x calls a, which calls b: ids 1 and 2 are shared.
        let chain = [
            ("x", client(9, 1, 0)),
            ("a", numbered(9, 1, 1)),
            ("a", client(9, 2, 1)),
            ("b", numbered(9, 2, 2)),
        ];
        for (order, edges) in in_every_order(&chain) {
            assert_eq!(
                edges,
                [edge("a", "b", false), edge("x", "a", false)],
                "order {order:?}"
            );
        }
        // The tester's trace: one call, no parent.
        let pair = [("sA", client(8, 17, 0)), ("sB", numbered(8, 17, 17))];
        for (order, edges) in in_every_order(&pair) {
            assert_eq!(edges, [edge("sA", "sB", false)], "order {order:?}");
        }
    }

    /// Children of one parent that wait in both generations (one turned
    /// between them) all link when it comes: the older ones were lost.
    #[test]
    fn children_waiting_across_a_turn_all_link() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        assert!(link(&mut linker, "old", &numbered(1, 2, 1)).is_empty());
        linker.waiting.turn();
        assert!(link(&mut linker, "new", &numbered(1, 3, 1)).is_empty());
        let mut edges = link(&mut linker, "parent", &numbered(1, 1, 0));
        edges.sort_by(|a, b| a.callee.cmp(&b.callee));
        assert_eq!(
            edges,
            [edge("parent", "new", false), edge("parent", "old", false)]
        );
    }

    /// Children of one parent id that never comes are bounded like any
    /// other remembered span: they used to gather in one list for good.
    #[test]
    fn children_waiting_for_one_parent_are_bounded() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        for n in 1..=(3 * GENERATION) as u32 {
            let child = numbered(1, n + 1, 1);
            assert!(link(&mut linker, "child", &child).is_empty());
        }
        let waiting: usize = [&linker.waiting.current, &linker.waiting.previous]
            .iter()
            .flat_map(|generation| generation.values())
            .map(Vec::len)
            .sum();
        assert!(waiting <= 2 * GENERATION, "{waiting} children kept");
        // The children kept link when their parent arrives.
        let parent = numbered(1, 1, 0);
        let edges = link(&mut linker, "parent", &parent);
        assert!(
            !edges.is_empty() && edges.len() <= 2 * GENERATION,
            "{}",
            edges.len()
        );
    }

    #[test]
    fn services_first_seen_after_many_others_still_link() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        for n in 1..=SERVICE_GENERATION as u32 {
            let root = numbered(n, 1, 0);
            assert!(link(&mut linker, &format!("svc-{n}"), &root).is_empty());
        }
        let trace = SERVICE_GENERATION as u32 + 1;
        assert!(link(&mut linker, "pf2", &numbered(trace, 1, 0)).is_empty());
        assert_eq!(
            link(&mut linker, "pb2", &numbered(trace, 2, 1)),
            [edge("pf2", "pb2", false)]
        );
        assert_eq!(linker.take_dropped(), 0);
    }

    #[test]
    fn services_seen_again_are_kept_forgotten_ones_count_their_edges() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        // Children waiting for their frontend parents (ids 1 and 2).
        assert!(link(&mut linker, "old", &numbered(1, 10, 1)).is_empty());
        assert!(link(&mut linker, "cart", &numbered(1, 20, 2)).is_empty());
        // Two generations of junk names; cart and frontend keep sending.
        for n in 1..=2 * SERVICE_GENERATION as u32 + 1 {
            link(&mut linker, &format!("junk-{n}"), &numbered(2, n, 0));
            if n % 1_000 == 0 {
                link(&mut linker, "cart", &numbered(3, n, 0));
                link(&mut linker, "frontend", &numbered(4, n, 0));
            }
        }
        assert_eq!(linker.take_dropped(), 0);
        // "old" was forgotten: its edge is counted, not written.
        assert!(link(&mut linker, "frontend", &numbered(1, 1, 0)).is_empty());
        assert_eq!(linker.take_dropped(), 1);
        assert_eq!(linker.take_dropped(), 0);
        assert_eq!(
            link(&mut linker, "frontend", &numbered(1, 2, 0)),
            [edge("frontend", "cart", false)]
        );
        // The names remembered stay bounded.
        let names = &linker.services;
        assert!(names.current.ids.len() + names.previous.ids.len() <= 2 * SERVICE_GENERATION);
        assert_eq!(names.current.ids.len(), names.current.names.len());
        assert_eq!(names.previous.ids.len(), names.previous.names.len());
    }

    #[test]
    fn tcp_client_spans_link_to_their_peer_service_http_ones_do_not() {
        let fields = SpanFields::of(&schema::build()).unwrap();
        let mut linker = EdgeLinker::new(fields);
        let with = |mut span: Span, transport: &str| {
            span.attributes = vec![
                attributes::string("network.transport", transport),
                attributes::string("peer.service", "mongodb"),
            ];
            span
        };
        assert_eq!(
            link(&mut linker, "ratings", &with(span(1, 0, 3, false), "tcp")),
            [edge("ratings", "mongodb", false)]
        );
        assert_eq!(
            link(&mut linker, "ratings", &with(span(2, 0, 3, true), "tcp")),
            [edge("ratings", "mongodb", true)]
        );
        // An HTTP client span's callee is linked through its SERVER child.
        assert!(link(&mut linker, "ratings", &with(span(3, 0, 3, false), "http")).is_empty());
        // The TCP server side is a root: no edge of its own.
        assert!(link(&mut linker, "mongodb", &with(span(4, 0, 2, false), "tcp")).is_empty());
    }
}
