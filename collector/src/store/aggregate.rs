//! Aggregations over the store: tantivy's aggregation module (percentiles
//! on a DDSketch, histograms, terms) run on the fast fields of every
//! partition a query's time range touches, merged into one answer. This is
//! how the query service computes latency quantiles, rates, error
//! breakdowns and the dependency graph without reading spans one by one.

use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{
    AggContextParams, AggregationLimitsGuard, DistributedAggregationCollector,
};
use tantivy::tokenizer::TokenizerManager;

use super::StoreError;
use super::read::{SpanQuery, SpanReader, build_query, index_err};

impl SpanReader {
    /// Runs an aggregation request (Elasticsearch's JSON form, as tantivy
    /// reads it; field names from [`super::schema::names`]) over the spans
    /// matching `query`, and returns tantivy's result as JSON.
    pub fn aggregate(
        &self,
        query: &SpanQuery,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, StoreError> {
        let aggs: Aggregations = serde_json::from_value(request)
            .map_err(|error| StoreError::Aggregation(error.to_string()))?;
        let (from, to) = query.time_range();
        let mut merged = IntermediateAggregationResults::default();
        for partition in self.newest_first(from, to) {
            let searcher = partition.reader.searcher();
            let collector = DistributedAggregationCollector::from_aggs(
                aggs.clone(),
                AggContextParams::new(
                    AggregationLimitsGuard::default(),
                    TokenizerManager::default(),
                ),
            );
            let tantivy_query = build_query(&partition.fields, query);
            let fruit = searcher
                .search(tantivy_query.as_ref(), &collector)
                .map_err(index_err(&partition))?;
            merged.merge_fruits(fruit).map_err(index_err(&partition))?;
        }
        let result = merged
            .into_final_result(aggs, AggregationLimitsGuard::default())
            .map_err(|error| StoreError::Aggregation(error.to_string()))?;
        serde_json::to_value(result).map_err(|error| StoreError::Aggregation(error.to_string()))
    }
}
