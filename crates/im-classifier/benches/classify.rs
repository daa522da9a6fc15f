//! Classification cost: the first step of every posted message.
//!
//! The classifier holds the built-in kinds plus a few application kinds, as a real server
//! would. `classify/text` is the common case (lookup plus the text validator on a typical
//! body); `classify/unknown` is the rejection path a misbehaving client hits.
// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use im_classifier::{KindSpec, MessageClassifier};
use serde_json::{Value, json};
use std::hint::black_box;

/// The built-ins and three application kinds, one of them on its own channel group.
fn classifier() -> MessageClassifier {
    let mut c = MessageClassifier::with_builtins();
    let app_kinds = [
        KindSpec::new("sticker"),
        KindSpec::new("location").validator(|body: &Value| {
            let ok = body["lat"].is_f64() && body["lon"].is_f64();
            if ok {
                Ok(())
            } else {
                Err("`lat` and `lon` must be numbers".into())
            }
        }),
        KindSpec::new("poll").group("bots"),
    ];
    for kind in app_kinds {
        if let Err(e) = c.register(kind) {
            panic!("bench setup: {e}");
        }
    }
    c
}

fn classify(c: &mut Criterion) {
    let classifier = classifier();
    let text = json!({"text": "Are we still on for lunch at 12:30? I can book the place."});
    assert!(
        classifier.classify("text", &text).is_ok(),
        "setup: text must classify"
    );
    assert!(
        classifier.classify("gif", &text).is_err(),
        "setup: gif must be unknown"
    );

    let mut group = c.benchmark_group("classify");
    group.bench_function("text", |b| {
        b.iter(|| classifier.classify(black_box("text"), black_box(&text)))
    });
    group.bench_function("unknown", |b| {
        b.iter(|| classifier.classify(black_box("gif"), black_box(&text)))
    });
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
