//! Agent config files: YAML or JSON documents, Istio's resources and the
//! Agent bootstrap, through reading (saphyr, with its depth and alias
//! bounds), validation with Istio's rules and compilation, as
//! `tracemesh validate` and a live reload run them.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let file: Arc<str> = Arc::from("fuzz.yaml");
        let _ = tracemesh_agent::compile::check_text(&file, text);
    }
});
