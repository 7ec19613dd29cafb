//! Istio's standard families as the workload's Telemetry shapes them
//! (`metrics.overrides`): a metric disabled on a side is not recorded
//! there, and not served when no side records it; `tagOverrides` remove a
//! standard label or upsert one (standard or new) whose value an
//! expression gives per request. A family's label names are the standard
//! ones minus those every recording side removes, plus every upserted
//! one; a side that removes a label another side keeps, or lacks a label
//! another side adds, reports it empty (in Prometheus an empty label is an
//! absent label).

use std::sync::Arc;

use crate::model::expr::{Attributes, Expression};
use crate::model::telemetry::{IstioMetric, Side, TagOverride, TelemetryPolicy};

/// Where one label's value comes from, on one side.
#[derive(Debug, Clone)]
pub enum LabelValue {
    /// The standard label at this index.
    Standard(usize),
    /// Empty: removed on this side (or only added by the other).
    Removed,
    /// An expression, evaluated per request (`unknown` when it fails).
    Upsert(Arc<Expression>),
}

/// The shape of one family.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Label names, in order.
    pub labels: Vec<String>,
    /// Client, then server: the value of each label, or `None` where the
    /// metric is disabled.
    pub sides: [Option<Vec<LabelValue>>; 2],
}

/// The index of `side` in [`Layout::sides`].
pub fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Layout {
    /// The standard shape: every label, on both sides.
    pub fn standard(standard: &[&str]) -> Self {
        let values: Vec<LabelValue> = (0..standard.len()).map(LabelValue::Standard).collect();
        Self {
            labels: standard.iter().map(|l| (*l).to_owned()).collect(),
            sides: [Some(values.clone()), Some(values)],
        }
    }

    /// The shape `policy` gives `metric`, whose standard labels are `standard`.
    pub fn build(metric: IstioMetric, standard: &[&str], policy: &TelemetryPolicy) -> Self {
        let tags = |side: Side| -> Option<&[TagOverride]> {
            match &policy.side(side).metrics {
                None => Some(&[]),
                Some(m) if m.enabled(metric) => Some(m.tags(metric)),
                Some(_) => None,
            }
        };
        let sides = [tags(Side::Client), tags(Side::Server)];
        let removed_on = |tags: &[TagOverride], label: &str| {
            tags.iter()
                .any(|t| matches!(t, TagOverride::Remove(l) if l == label))
        };
        let mut labels: Vec<String> = standard
            .iter()
            .filter(|label| sides.iter().flatten().any(|tags| !removed_on(tags, label)))
            .map(|l| (*l).to_owned())
            .collect();
        for tags in sides.iter().flatten() {
            for tag in tags.iter() {
                if let TagOverride::Upsert(label, _) = tag
                    && !labels.iter().any(|l| l == label)
                {
                    labels.push(label.clone());
                }
            }
        }
        let values = |tags: &[TagOverride]| -> Vec<LabelValue> {
            labels
                .iter()
                .map(|label| {
                    let last = tags.iter().rev().find(|t| t.label() == label);
                    match last {
                        Some(TagOverride::Upsert(_, expr)) => LabelValue::Upsert(expr.clone()),
                        Some(TagOverride::Remove(_)) => LabelValue::Removed,
                        None => standard
                            .iter()
                            .position(|s| s == label)
                            .map_or(LabelValue::Removed, LabelValue::Standard),
                    }
                })
                .collect()
        };
        Self {
            sides: sides.map(|tags| tags.map(values)),
            labels,
        }
    }

    /// Whether some side records the metric (so it is served).
    pub fn served(&self) -> bool {
        self.sides.iter().any(Option::is_some)
    }

    /// Whether `other` needs the same collector (same labels, both served
    /// or not): then the series recorded so far are kept across a reload.
    pub fn same_shape(&self, other: &Layout) -> bool {
        self.labels == other.labels && self.served() == other.served()
    }

    /// Whether any side evaluates an expression.
    pub fn has_expressions(&self, side: Side) -> bool {
        self.sides[side_index(side)]
            .iter()
            .flatten()
            .any(|v| matches!(v, LabelValue::Upsert(_)))
    }

    /// The label values for one observation on `side`: `standard` values,
    /// and `upserted` values in the order the layout's expressions come;
    /// `None` when the metric is disabled on `side`.
    pub fn values<'a>(
        &self,
        side: Side,
        standard: &[&'a str],
        upserted: &mut impl Iterator<Item = &'a str>,
    ) -> Option<Vec<&'a str>> {
        let values = self.sides[side_index(side)].as_ref()?;
        Some(
            values
                .iter()
                .map(|v| match v {
                    LabelValue::Standard(i) => standard.get(*i).copied().unwrap_or(""),
                    LabelValue::Removed => "",
                    LabelValue::Upsert(_) => upserted.next().unwrap_or("unknown"),
                })
                .collect(),
        )
    }

    /// Evaluates `side`'s expressions, in order, into `out`.
    pub fn evaluate(&self, side: Side, attrs: &Attributes<'_>, out: &mut Vec<String>) {
        for value in self.sides[side_index(side)].iter().flatten() {
            if let LabelValue::Upsert(expr) = value {
                out.push(
                    expr.eval(attrs)
                        .map_or_else(|_| "unknown".to_owned(), |v| v.to_string()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::telemetry::{MetricOverride, MetricsPolicy};

    #[test]
    fn removals_and_upserts_shape_the_labels_per_side() {
        let mut policy = TelemetryPolicy::default();
        policy.server.metrics = Some(MetricsPolicy {
            disabled: false,
            overrides: vec![MetricOverride {
                metric: IstioMetric::RequestCount,
                disabled: false,
                tags: vec![
                    TagOverride::Remove("b".into()),
                    TagOverride::Upsert("c".into(), Arc::new(Expression::parse("'x'").unwrap())),
                ],
            }],
        });
        policy.client.metrics = Some(MetricsPolicy {
            disabled: false,
            overrides: vec![MetricOverride {
                metric: IstioMetric::RequestCount,
                disabled: false,
                tags: vec![TagOverride::Remove("b".into())],
            }],
        });
        let layout = Layout::build(IstioMetric::RequestCount, &["a", "b"], &policy);
        assert_eq!(layout.labels, ["a", "c"], "b removed on both sides");
        let mut upserted = ["x"].into_iter();
        assert_eq!(
            layout.values(Side::Server, &["1", "2"], &mut upserted),
            Some(vec!["1", "x"])
        );
        let mut none = std::iter::empty();
        assert_eq!(
            layout.values(Side::Client, &["1", "2"], &mut none),
            Some(vec!["1", ""]),
            "the client side does not add c"
        );
        let other = Layout::build(IstioMetric::RequestDuration, &["a", "b"], &policy);
        assert!(other.same_shape(&Layout::standard(&["a", "b"])));

        policy.client.metrics = Some(MetricsPolicy {
            disabled: true,
            overrides: Vec::new(),
        });
        let layout = Layout::build(IstioMetric::RequestDuration, &["a", "b"], &policy);
        assert!(layout.served(), "the server side still records it");
        assert_eq!(layout.values(Side::Client, &["1", "2"], &mut none), None);
    }
}
