use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;

fn round_trip<T>(value: &T) -> T
where
    T: Serialize + DeserializeOwned,
{
    let text = serde_json::to_string(value).expect("serialize");
    serde_json::from_str(&text).expect("deserialize")
}

fn sample_task(instance: Option<u32>) -> Task {
    Task {
        id: TaskId::from_parts("shop", "order-42", "charge", instance),
        attempt: 2,
        handler: "charge_payment".into(),
        input: json!({"amount": 1999, "currency": "EUR"}),
        deadline: Some("2026-05-01T12:00:00Z".into()),
        heartbeat_interval_seconds: 10,
        flow_run: FlowRunRef {
            namespace: "shop".into(),
            name: "order-42".into(),
            uid: "6f1c".into(),
        },
        step: "charge".into(),
        instance,
    }
}

#[test]
fn claim_request_shape() {
    let request = ClaimRequest {
        pool: "payments".into(),
        worker: "payments-7d9f-abcde".into(),
        handlers: vec!["charge_payment".into(), "refund".into()],
        capacity: 4,
        wait_seconds: 30,
        namespace: None,
    };
    assert_eq!(
        serde_json::to_value(&request).unwrap(),
        json!({
            "pool": "payments",
            "worker": "payments-7d9f-abcde",
            "handlers": ["charge_payment", "refund"],
            "capacity": 4,
            "waitSeconds": 30
        })
    );
    assert_eq!(round_trip(&request), request);
    assert_eq!(request.validate(), Ok(()));
}

#[test]
fn claim_request_validation_names_every_problem() {
    let request = ClaimRequest {
        pool: String::new(),
        worker: "w".into(),
        handlers: vec![],
        capacity: 0,
        wait_seconds: MAX_WAIT_SECONDS + 1,
        namespace: None,
    };
    let problems = request.validate().unwrap_err();
    for needle in ["pool", "handlers", "capacity", "waitSeconds"] {
        assert!(problems.contains(needle), "{problems} should name {needle}");
    }
}

#[test]
fn task_shape_with_instance_and_deadline() {
    let task = sample_task(Some(7));
    assert_eq!(
        serde_json::to_value(&task).unwrap(),
        json!({
            "id": "shop/order-42/charge/7",
            "attempt": 2,
            "handler": "charge_payment",
            "input": {"amount": 1999, "currency": "EUR"},
            "deadline": "2026-05-01T12:00:00Z",
            "heartbeatIntervalSeconds": 10,
            "flowRun": {"namespace": "shop", "name": "order-42", "uid": "6f1c"},
            "step": "charge",
            "instance": 7
        })
    );
    assert_eq!(round_trip(&task), task);
}

#[test]
fn task_optional_fields_are_omitted_and_default() {
    let mut task = sample_task(None);
    task.deadline = None;
    let value = serde_json::to_value(&task).unwrap();
    assert_eq!(value["id"], "shop/order-42/charge");
    assert!(value.get("instance").is_none());
    assert!(value.get("deadline").is_none());
    let parsed: Task = serde_json::from_value(value).unwrap();
    assert_eq!(parsed, task);
}

#[test]
fn claim_response_round_trip_and_empty_poll() {
    let response = ClaimResponse {
        tasks: vec![sample_task(None), sample_task(Some(0))],
    };
    assert_eq!(round_trip(&response), response);
    let empty: ClaimResponse = serde_json::from_str(r#"{"tasks":[]}"#).unwrap();
    assert!(empty.tasks.is_empty());
}

#[test]
fn heartbeat_shapes() {
    let request = HeartbeatRequest {
        id: "ns/f/s".into(),
        attempt: 1,
        worker: "w-1".into(),
        wait_seconds: 0,
    };
    assert_eq!(
        serde_json::to_value(&request).unwrap(),
        json!({"id": "ns/f/s", "attempt": 1, "worker": "w-1"}),
        "no wait: the shape workers always sent"
    );
    assert_eq!(round_trip(&request), request);
    let held = HeartbeatRequest {
        wait_seconds: 10,
        ..request
    };
    assert_eq!(
        serde_json::to_value(&held).unwrap(),
        json!({"id": "ns/f/s", "attempt": 1, "worker": "w-1", "waitSeconds": 10})
    );
    assert_eq!(round_trip(&held), held);
    let response: HeartbeatResponse = serde_json::from_str(r#"{"cancel":true}"#).unwrap();
    assert!(response.cancel);
    // Forward compatible: an empty object means "keep going".
    let response: HeartbeatResponse = serde_json::from_str("{}").unwrap();
    assert!(!response.cancel);
}

#[test]
fn complete_shape() {
    let request = CompleteRequest {
        id: "ns/f/s".into(),
        attempt: 3,
        worker: "w-1".into(),
        output: json!({"chargeId": "ch_1"}),
    };
    assert_eq!(
        serde_json::to_value(&request).unwrap(),
        json!({"id": "ns/f/s", "attempt": 3, "worker": "w-1", "output": {"chargeId": "ch_1"}})
    );
    assert_eq!(round_trip(&request), request);
}

#[test]
fn fail_shape_with_and_without_exit_code() {
    let request = FailRequest {
        id: "ns/f/s".into(),
        attempt: 1,
        worker: "w-1".into(),
        error: TaskError {
            error_type: error_types::NON_ZERO_EXIT.into(),
            message: "boom".into(),
            exit_code: Some(3),
        },
        retryable: true,
    };
    assert_eq!(
        serde_json::to_value(&request).unwrap(),
        json!({
            "id": "ns/f/s",
            "attempt": 1,
            "worker": "w-1",
            "error": {"type": "NonZeroExit", "message": "boom", "exitCode": 3},
            "retryable": true
        })
    );
    assert_eq!(round_trip(&request), request);

    let error = TaskError {
        error_type: "CardDeclined".into(),
        message: "insufficient funds".into(),
        exit_code: None,
    };
    assert_eq!(
        serde_json::to_value(&error).unwrap(),
        json!({"type": "CardDeclined", "message": "insufficient funds"})
    );
}

#[test]
fn ack_shape() {
    assert_eq!(
        serde_json::to_value(Ack { duplicate: true }).unwrap(),
        json!({"duplicate": true})
    );
    let ack: Ack = serde_json::from_str("{}").unwrap();
    assert!(!ack.duplicate);
}

#[test]
fn error_body_codes_and_statuses() {
    let body = ErrorBody::new(ErrorCode::StaleAttempt, "attempt 1 is not current (3 is)");
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({"code": "staleAttempt", "message": "attempt 1 is not current (3 is)"})
    );
    assert_eq!(round_trip(&body), body);
    let cases = [
        (ErrorCode::BadRequest, "badRequest", 400),
        (ErrorCode::Unauthorized, "unauthorized", 401),
        (ErrorCode::Forbidden, "forbidden", 403),
        (ErrorCode::StaleAttempt, "staleAttempt", 409),
        (ErrorCode::UnknownTask, "unknownTask", 409),
        (ErrorCode::PayloadTooLarge, "payloadTooLarge", 413),
        (ErrorCode::Unavailable, "unavailable", 503),
        (ErrorCode::Internal, "internal", 500),
    ];
    for (code, text, status) in cases {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(text));
        assert_eq!(code.http_status(), status);
    }
    let unknown: ErrorBody =
        serde_json::from_str(r#"{"code":"somethingNew","message":"m"}"#).unwrap();
    assert_eq!(unknown.code, ErrorCode::Unknown);
}

#[test]
fn task_id_is_a_plain_string() {
    let id = TaskId::from_parts("a", "b", "c", None);
    assert_eq!(serde_json::to_value(&id).unwrap(), json!("a/b/c"));
    assert_eq!(id.to_string(), "a/b/c");
    assert_eq!(id.as_str(), "a/b/c");
}

#[test]
fn task_ids_for_a_run_carry_its_uid() {
    assert_eq!(
        TaskId::for_run("a", "b", "u-1", "c", Some(2)).as_str(),
        "a/b/c/2@u-1"
    );
    assert_eq!(
        TaskId::for_run("a", "b", "", "c", None),
        TaskId::from_parts("a", "b", "c", None),
        "no uid: the older form"
    );
}

#[test]
fn truncate_message_keeps_the_end_on_a_char_boundary() {
    assert_eq!(truncate_message("short", 10), "short");
    let long = format!("{}tail", "x".repeat(100));
    let cut = truncate_message(&long, 20);
    assert!(cut.len() <= 20, "{cut}");
    assert!(cut.starts_with('…'));
    assert!(cut.ends_with("tail"));
    // Multi-byte characters are never split.
    let accents = "é".repeat(50);
    let cut = truncate_message(&accents, 11);
    assert!(cut.len() <= 11);
    assert!(cut.trim_start_matches('…').chars().all(|c| c == 'é'));
}
