//! The answers every route can give besides its own, added to the served
//! document in one place: what the request parser refuses (by what the
//! route reads: path, query, body), a stalled body, a full state
//! filesystem (on routes that write), internal failures and a daemon with
//! every connection busy. A handler's
//! `#[utoipa::path]` lists only what its own logic answers.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

/// Adds the common answers to every operation of `doc` that lacks them,
/// and gives each answer without a description its status's.
pub fn add_common(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        // Only reads answer GET and HEAD; every other method may write.
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
            (&mut item.head, false),
        ];
        for (operation, writes) in operations {
            if let Some(operation) = operation {
                add_to(operation, writes);
            }
        }
    }
}

fn add_to(operation: &mut Operation, writes: bool) {
    let reads = |place: ParameterIn| {
        operation
            .parameters
            .iter()
            .flatten()
            .any(|p| std::mem::discriminant(&p.parameter_in) == std::mem::discriminant(&place))
    };
    let mut common: Vec<(&str, &str)> = Vec::new();
    if reads(ParameterIn::Path) {
        common.push(("400", "A path parameter is malformed"));
        common.push(("404", "No such object"));
    }
    if reads(ParameterIn::Query) {
        common.push(("400", "The query string is malformed"));
    }
    if operation.request_body.is_some() {
        common.push(("400", "The body is not valid JSON for this request, or a value is out of range"));
        common.push(("413", "The body is larger than the daemon reads"));
        common.push(("415", "The body is not `Content-Type: application/json`"));
        common.push(("408", "The body stopped arriving for `[api] body_timeout_secs` (`timeout`)"));
    }
    if writes {
        common.push(("507", "The state filesystem is full (`no_space`); the message names its mount point"));
    }
    common.push(("500", "An internal failure (state database, host I/O, a bug)"));
    common.push(("503", "Every API connection is busy (`[api] max_connections`); try again (`unavailable`)"));

    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses.entry(status.to_owned()).or_insert_with(|| error_response(description));
    }
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response {
            if response.description.is_empty() {
                response.description = describe(status).to_owned();
            }
        }
    }
}

/// An error answer: `{code, message}` JSON.
fn error_response(description: &str) -> RefOr<Response> {
    let body = Content::new(Some(Ref::from_schema_name("ApiError")));
    RefOr::T(Response::builder().description(description).content("application/json", body).build())
}

/// What an answer of `status` means in this API, where its handler says nothing.
fn describe(status: &str) -> &'static str {
    match status {
        "200" => "Done",
        "202" => "The operation, started: follow it at /v1/operations/{id} or on /v1/events",
        "204" => "Done; nothing to show",
        "400" => "The request is invalid",
        "404" => "No such object",
        "409" => "The object's state or another operation on it stands in the way",
        "501" => "The host cannot do this (a VMM, tool or agent is missing)",
        "502" => "A download or a remote catalog failed",
        _ => "See the error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_gets_what_its_parser_can_refuse() {
        let doc = crate::api::openapi();
        let get = |path: &str| doc.paths.paths.get(path).unwrap();
        let statuses = |op: &Operation| op.responses.responses.keys().cloned().collect::<Vec<_>>();

        let health = get("/v1/health").get.as_ref().unwrap();
        assert_eq!(statuses(health), ["200", "500", "503"]);
        let patch = get("/v1/vms/{name}").patch.as_ref().unwrap();
        for status in ["200", "400", "404", "408", "409", "413", "415", "500", "503", "507"] {
            assert!(statuses(patch).iter().any(|s| s == status), "PATCH lacks {status}: {:?}", statuses(patch));
        }
        let remove = get("/v1/images/{name}").delete.as_ref().unwrap();
        assert!(!statuses(remove).iter().any(|s| s == "415"), "a route without a body cannot answer 415");
        for item in doc.paths.paths.values() {
            for op in [&item.get, &item.post, &item.delete, &item.patch].into_iter().flatten() {
                for response in op.responses.responses.values() {
                    let RefOr::T(response) = response else { continue };
                    assert!(
                        !response.description.is_empty(),
                        "{:?} has an answer without a description",
                        op.operation_id
                    );
                }
            }
        }
    }
}
