//! Every contract example validates against its JSON Schema, decodes into its Rust type and, encoded
//! again, still validates; every invalid example is rejected; the original's payloads decode.

use std::path::{Path, PathBuf};

use contracts::*;
use serde_json::Value;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Schemas {
    registry: jsonschema::Registry<'static>,
}

impl Schemas {
    fn load() -> Self {
        let mut resources = Vec::new();
        for (_, schema) in ALL_SCHEMAS {
            let value = read_json(&dir("schemas").join(format!("{schema}.schema.json")));
            let id = value["$id"].as_str().expect("$id").to_owned();
            assert!(
                id.ends_with(&format!("/{schema}.schema.json")),
                "$id of {schema}: {id}"
            );
            resources.push((id, value));
        }
        let mut registry = jsonschema::Registry::new();
        for (id, value) in resources {
            registry = registry.add(id, value).expect("add schema");
        }
        Self {
            registry: registry.prepare().expect("registry"),
        }
    }

    fn validator(&self, schema: &str) -> jsonschema::Validator {
        let root = read_json(&dir("schemas").join(format!("{schema}.schema.json")));
        jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&root)
            .unwrap_or_else(|e| panic!("{schema}: {e}"))
    }

    fn errors(&self, schema: &str, instance: &Value) -> Vec<String> {
        self.validator(schema)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }
}

/// Decode the example with the Rust type, encode it again, and return the re-encoded JSON.
fn round_trip<T: Contract>(bytes: &[u8]) -> Value {
    let decoded: T = decode(bytes).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    let encoded = encode(&decoded);
    let again: T = decode(&encoded).expect("re-decode");
    let v1 = serde_json::to_value(&decoded).expect("value");
    let v2 = serde_json::to_value(&again).expect("value");
    assert_eq!(v1, v2, "{} is stable under encode/decode", T::NAME);
    serde_json::from_slice(&encoded).expect("json")
}

fn round_trip_by_schema(schema: &str, bytes: &[u8]) -> Value {
    match schema {
        s if s == ImageUploaded::SCHEMA => round_trip::<ImageUploaded>(bytes),
        s if s == RequestAnalysis::SCHEMA => round_trip::<RequestAnalysis>(bytes),
        s if s == AnalysisStarted::SCHEMA => round_trip::<AnalysisStarted>(bytes),
        s if s == RecognitionRequested::SCHEMA => round_trip::<RecognitionRequested>(bytes),
        s if s == RecognitionCompleted::SCHEMA => round_trip::<RecognitionCompleted>(bytes),
        s if s == RecognitionFailed::SCHEMA => round_trip::<RecognitionFailed>(bytes),
        s if s == AnalysisCompleted::SCHEMA => round_trip::<AnalysisCompleted>(bytes),
        s if s == AnalysisFailed::SCHEMA => round_trip::<AnalysisFailed>(bytes),
        other => panic!("no Rust type for {other}"),
    }
}

#[test]
fn every_contract_has_a_schema_and_a_valid_example() {
    let schemas = Schemas::load();
    for (name, schema) in ALL_SCHEMAS {
        let path = dir("examples").join(format!("{schema}.json"));
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {}: {e}", path.display()));
        let example: Value = serde_json::from_slice(&bytes).expect("json");
        let errors = schemas.errors(schema, &example);
        assert!(
            errors.is_empty(),
            "{name} example violates its schema: {errors:?}"
        );

        let re_encoded = round_trip_by_schema(schema, &bytes);
        let errors = schemas.errors(schema, &re_encoded);
        assert!(
            errors.is_empty(),
            "{name} as the Rust type writes it violates its schema: {errors:?}"
        );
    }
}

#[test]
fn invalid_examples_are_rejected_by_their_schema() {
    let schemas = Schemas::load();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir("examples/invalid")).expect("examples/invalid") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("name")
            .to_owned();
        let schema = ALL_SCHEMAS
            .iter()
            .map(|(_, s)| *s)
            .find(|s| file.starts_with(&format!("{s}.")))
            .unwrap_or_else(|| panic!("{file}: no schema prefix"));
        let errors = schemas.errors(schema, &read_json(&path));
        assert!(!errors.is_empty(), "{file} must violate {schema}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} invalid examples");
}

#[test]
fn schema_ids_match_the_rust_types() {
    for (name, schema) in ALL_SCHEMAS {
        let value = read_json(&dir("schemas").join(format!("{schema}.schema.json")));
        assert_eq!(value["title"].as_str(), Some(*name), "title of {schema}");
    }
}

fn original(file: &str) -> Vec<u8> {
    std::fs::read(dir("examples/original").join(file)).expect("original example")
}

#[test]
fn original_pascal_case_image_uploaded_decodes() {
    let e: ImageUploaded =
        decode(&original("ingestion.image-uploaded.pascal.json")).expect("decode");
    assert_eq!(
        e.upload_id.to_string(),
        "2c2c7f4d-9a1e-4c55-8f0e-6b1d2f3a4b5c"
    );
    assert_eq!(
        e.object_key,
        "images/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg"
    );
    assert_eq!(e.bytes, 438127);
    assert_eq!(e.owner, None);
    assert_eq!(
        e.occurred_at.to_rfc3339(),
        "2025-11-02T16:05:43.123456700+00:00"
    );

    let camel: ImageUploaded =
        decode(&original("contract.image-uploaded.camel.json")).expect("decode");
    assert_eq!(camel.upload_id, e.upload_id);
    assert_eq!(camel.checksum, e.checksum);
}

#[test]
fn original_recognition_completed_decodes_with_machine_type_or_type() {
    let produced: RecognitionCompleted =
        decode(&original("vision.recognition-completed.json")).expect("decode");
    assert_eq!(
        produced.aggregate.machine_type.as_deref(),
        Some("Wheel Loader")
    );
    assert_eq!(produced.aggregate.weight, Some(14500.0));
    assert_eq!(
        produced.aggregate.attachment.as_ref().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        produced.provider.reasoning_model.as_deref(),
        Some("gemini-1.5-flash")
    );
    assert_eq!(produced.object_key, None);

    // The shared .NET contract re-serialised by the bridge: PascalCase and `Type`.
    let bridged: RecognitionCompleted =
        decode(&original("messaging.recognition-completed.type.json")).expect("decode");
    assert_eq!(bridged.aggregate.machine_type.as_deref(), Some("Excavator"));
    assert_eq!(bridged.aggregate.brand.as_deref(), Some("Volvo"));
    assert_eq!(bridged.provider.featureset.len(), 3);
    assert!(bridged.aggregate.is_confident);
}

#[test]
fn original_analysis_events_decode() {
    let started: AnalysisStarted = decode(&original("analysis-started.final.json")).expect("final");
    assert!(started.object_key.ends_with(".jpg"));
    assert_eq!(started.analysis_id, None);
    let proto: AnalysisStarted =
        decode(&original("analysis-started.prototype.json")).expect("prototype");
    assert_eq!(
        proto.correlation_id.as_deref(),
        Some("7c9f10a6c21f45e4a2f42c8b2a2b3a19")
    );

    let done: AnalysisCompleted =
        decode(&original("analysis-completed.final.json")).expect("final");
    assert!(done.success);
    let payload = done.recognition_payload.expect("payload");
    assert_eq!(payload.aggregate.model.as_deref(), Some("930G"));
    assert_eq!(payload.aggregate.machine_type, None);
    let proto: AnalysisCompleted =
        decode(&original("analysis-completed.prototype.json")).expect("prototype");
    assert!(proto.recognition_payload.is_none());

    let cmd: RequestAnalysis =
        decode(&original("request-analysis.prototype.json")).expect("command");
    assert_eq!(cmd.correlation_id, "7c9f10a6c21f45e4a2f42c8b2a2b3a19");
    assert_eq!(cmd.analysis_id, None);
}

#[test]
fn unknown_fields_are_ignored_and_bad_shapes_are_clear_errors() {
    let with_extra =
        br#"{"objectKey":"images/2025/01/01/x.jpg","futureField":{"a":1},"AnotherOne":[1,2]}"#;
    let started: AnalysisStarted = decode(with_extra).expect("unknown fields ignored");
    assert_eq!(started.object_key, "images/2025/01/01/x.jpg");

    let err = decode::<AnalysisStarted>(b"{not json").expect_err("not json");
    assert!(
        err.to_string()
            .contains("analysis.started.v1: body is not JSON"),
        "{err}"
    );
    let err = decode::<ImageUploaded>(br#"{"uploadId":"nope"}"#).expect_err("bad shape");
    assert!(
        err.to_string()
            .contains("image.uploaded.v1: does not match the contract"),
        "{err}"
    );
}

#[test]
fn unknown_failure_reasons_from_newer_producers_decode_as_unknown() {
    let json = br#"{"analysisId":"0193a5b0-7c1e-7a2b-9c3d-4e5f6a7b8c9d","objectKey":"k","reason":"quota_exceeded","message":"m","failedAt":"2025-11-02T16:07:44Z"}"#;
    let failed: AnalysisFailed = decode(json).expect("decode");
    assert_eq!(failed.reason, FailureReason::Unknown);
}

#[test]
fn display_name_joins_the_known_parts() {
    let agg = MachineAggregate {
        brand: Some("Caterpillar".into()),
        machine_type: None,
        model: Some("930G".into()),
        ..Default::default()
    };
    assert_eq!(agg.display_name(), "Caterpillar, 930G");
    assert_eq!(MachineAggregate::default().display_name(), "");
}
