//! `--scenario`: one switch that changes what the mesh does, so the effect
//! shows in the live numbers, the traces and the dashboards within seconds.

use std::time::Duration;

use super::topology::Workload;

/// What a demo run changes from plain Bookinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// ratings answers 100 ms late: reviews v2/v3 and the page slow down,
    /// and with the article's `maxConnections: 1` requests queue for
    /// ratings' one connection.
    SlowRatings,
    /// reviews-v3 answers half its requests with 503: the reviews
    /// VirtualService retries a 5xx once (Istio's default retry policy no
    /// longer retries 503) and the page shows "reviews unavailable" when
    /// the retry fails too (`URX`).
    FailingReviewsV3,
    /// The reviews VirtualService from Istio's traffic-shifting task: 50%
    /// to v1, 50% to v3.
    #[value(name = "shift-50-50")]
    Shift5050,
    /// productpage's rate limit lowered to 5 requests a second per client:
    /// at the default 10 qps about half the load gets 429 (flag RL).
    RateLimited,
}

/// How an application misbehaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Added before every answer.
    pub delay: Duration,
    /// Share of requests answered 503, in percent.
    pub fail_percent: u8,
}

/// The reviews routing applied without a scenario.
const REVIEWS_ROUTING: &str = include_str!("../../examples/bookinfo/reviews.yaml");

/// What `failing-reviews-v3` adds to each reviews rule: one retry of a
/// 5xx, as an operator answers a flaky version. Istio's default retry
/// policy leaves 503 alone since 1.24, so without it nothing is retried.
const REVIEWS_RETRY: &str = "    retries: {attempts: 1, retryOn: 5xx}\n";

/// The reviews VirtualService of `shift-50-50`.
const REVIEWS_50_V3: &str = include_str!("../../examples/bookinfo/reviews-50-v3.yaml");

/// How a workload's application behaves under `scenario`.
pub fn behaviour(scenario: Option<Scenario>, workload: &Workload) -> Behaviour {
    match (scenario, workload.name) {
        (Some(Scenario::SlowRatings), "ratings-v1") => Behaviour {
            delay: Duration::from_millis(100),
            fail_percent: 0,
        },
        (Some(Scenario::FailingReviewsV3), "reviews-v3") => Behaviour {
            delay: Duration::ZERO,
            fail_percent: 50,
        },
        _ => Behaviour::default(),
    }
}

/// The article's rate limit on productpage.
const PRODUCTPAGE_RATE_LIMIT: &str =
    include_str!("../../examples/bookinfo/productpage-ratelimit.yaml");

/// The article's token bucket, and the one `rate-limited` puts in its place.
const ARTICLE_BUCKET: &str =
    "tokenBucket: {maxTokens: 1000, tokensPerFill: 1000, fillInterval: 60s}";
const TIGHT_BUCKET: &str = "tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 1s}";

/// productpage's RateLimitPolicy under `scenario`.
pub fn productpage_rate_limit(scenario: Option<Scenario>) -> String {
    match scenario {
        Some(Scenario::RateLimited) => PRODUCTPAGE_RATE_LIMIT.replace(ARTICLE_BUCKET, TIGHT_BUCKET),
        _ => PRODUCTPAGE_RATE_LIMIT.to_owned(),
    }
}

/// The reviews DestinationRule and VirtualService documents under `scenario`.
pub fn reviews_routing(scenario: Option<Scenario>) -> String {
    match scenario {
        Some(Scenario::Shift5050) => {
            // The subsets stay; only the VirtualService changes.
            let subsets = REVIEWS_ROUTING
                .split("\n---\n")
                .find(|doc| doc.contains("kind: DestinationRule"))
                .unwrap_or_default();
            format!("{subsets}\n---\n{REVIEWS_50_V3}")
        }
        Some(Scenario::FailingReviewsV3) => {
            REVIEWS_ROUTING.replace("    route:\n", &format!("{REVIEWS_RETRY}    route:\n"))
        }
        _ => REVIEWS_ROUTING.to_owned(),
    }
}

/// The weight of each reviews version in the split the demo applies (for
/// the report and the tests): (`version`, percent).
pub fn reviews_weights(scenario: Option<Scenario>) -> &'static [(&'static str, u32)] {
    match scenario {
        Some(Scenario::Shift5050) => &[("v1", 50), ("v3", 50)],
        _ => &[("v1", 50), ("v2", 30), ("v3", 20)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_tightens_the_article_bucket() {
        assert!(productpage_rate_limit(None).contains(ARTICLE_BUCKET));
        let tight = productpage_rate_limit(Some(Scenario::RateLimited));
        assert!(
            tight.contains(TIGHT_BUCKET) && !tight.contains(ARTICLE_BUCKET),
            "{tight}"
        );
    }

    /// Every reviews rule retries under `failing-reviews-v3`, and none
    /// otherwise.
    #[test]
    fn failing_reviews_v3_retries_every_reviews_rule() {
        let yaml = reviews_routing(Some(Scenario::FailingReviewsV3));
        let rules = yaml.matches("  - name: ").count();
        assert_eq!(rules, 2, "{yaml}");
        assert_eq!(yaml.matches(REVIEWS_RETRY).count(), rules, "{yaml}");
        assert!(!reviews_routing(None).contains("retries"));
    }

    /// The weights the report states are the ones the YAML applies.
    #[test]
    fn stated_weights_match_the_virtual_service() {
        for scenario in [None, Some(Scenario::Shift5050)] {
            let yaml = reviews_routing(scenario);
            let split = yaml.rsplit("route:").next().unwrap_or_default();
            let mut found = Vec::new();
            let mut subset = None;
            for line in split.lines() {
                if let Some(rest) = line.split("subset: ").nth(1) {
                    subset = Some(rest.trim_end_matches('}').trim().to_owned());
                }
                if let Some(weight) = line.trim().strip_prefix("weight: ") {
                    found.push((subset.take().unwrap(), weight.parse::<u32>().unwrap()));
                }
            }
            let stated: Vec<(String, u32)> = reviews_weights(scenario)
                .iter()
                .map(|(v, w)| ((*v).to_owned(), *w))
                .collect();
            assert_eq!(found, stated, "{scenario:?}");
        }
    }
}
