//! Request targets under each of Istio's `pathNormalization` options (the
//! first byte picks the option). Normalizing is idempotent: what the agent
//! forwards reads the same when normalized again, so no later hop can judge
//! a path the agent's authorization did not see.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_agent::path::{PathNormalization, normalize};

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let mode = MODES[usize::from(pick) % MODES.len()];
    if let Ok(Some(normal)) = normalize(target, mode) {
        assert_eq!(
            normalize(&normal, mode),
            Ok(None),
            "{target:?} normalized to {normal:?}, which normalizes again"
        );
    }
});
