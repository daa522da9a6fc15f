//! A message draft as the API reads it: JSON into `Draft`, then the classifier's validation
//! of its body. Nothing panics, and an accepted draft survives a round trip.
#![no_main]

use im_classifier::MessageClassifier;
use im_protocol::Draft;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CLASSIFIER: OnceLock<MessageClassifier> = OnceLock::new();
    let classifier = CLASSIFIER.get_or_init(MessageClassifier::new);
    let Ok(draft) = serde_json::from_slice::<Draft>(data) else {
        return;
    };
    if classifier.classify(&draft.kind, &draft.body).is_ok() {
        let again: Draft = serde_json::from_slice(&serde_json::to_vec(&draft).unwrap()).unwrap();
        assert_eq!(again.kind, draft.kind);
        assert_eq!(again.body, draft.body);
        assert_eq!(again.client_id, draft.client_id);
    }
});
