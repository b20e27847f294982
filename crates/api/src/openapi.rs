//! `/openapi.json`, generated from the handlers' `#[utoipa::path]` annotations.

use std::sync::LazyLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::dto::*;
use crate::error::{ErrorBody, ErrorDetail};
use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(title = "meterstand", description = "Pseudonymised smart-meter readings: frozen anonymous statistics, connections, data-subject requests (export, erasure, objection)."),
    paths(
        crate::healthz, crate::readyz, crate::metrics_endpoint, crate::openapi,
        handlers::statistics,
        handlers::put_connection,
        handlers::export, handlers::erase, handlers::object, handlers::withdraw_objection,
        handlers::backup,
    ),
    components(schemas(
        StatisticsResponse, StatisticsRow,
        ConnectionBody,
        ConnectionOut, ConnectionResponse, ExportResponse, ExportReadings, ReadingOut,
        ObjectionResponse, ReceiptOut, DeletedOut, KeptOut, BackupRequest, BackupResponse, ErrorBody, ErrorDetail,
        GranularityParam, RegisterParam, FormatParam, ExportFormatParam, ConsentParam,
        ParquetFile,
    )),
    modifiers(&BearerAuth, &StandardErrors),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The refusals every `/v1` call can meet, whatever the handler: they come from the shared
/// input, limit and audit code, so they are listed here once instead of on each handler.
struct StandardErrors;

const V1_ERRORS: [(&str, &str); 8] = [
    (
        "400",
        "Bad parameter, path or body; the message names it and what it accepts",
    ),
    ("401", "No valid bearer token"),
    ("403", "The token's role may not call this endpoint"),
    ("404", "Not found"),
    ("413", "Body larger than api.max_body_bytes"),
    ("408", "Body not received within api.body_timeout"),
    (
        "500",
        "Internal error, or the audit line could not be written",
    ),
    (
        "503",
        "More than api.max_concurrent calls at once, or the store is closing; retry",
    ),
];

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = || {
            ResponseBuilder::new().content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations: [(&mut Option<Operation>, bool); 4] = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, false),
            ];
            for (operation, takes_body) in operations {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                for (status, description) in V1_ERRORS {
                    if status == "408" && !takes_body {
                        continue;
                    }
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(error().description(description).build()));
                }
            }
        }
    }
}

static JSON: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
});

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    JSON.clone()
}
