//! `/openapi.json`, generated from the handlers' `#[utoipa::path]` annotations.

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto::*;
use crate::error::{ErrorBody, ErrorDetail};
use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(title = "meterstand", description = "Pseudonymised smart-meter readings: aggregates, series, connections, data-subject requests."),
    paths(
        crate::healthz, crate::readyz, crate::metrics_endpoint, crate::openapi,
        handlers::aggregates, handlers::series, handlers::put_connection,
        handlers::export, handlers::erase, handlers::backup,
    ),
    components(schemas(
        AggregateResponse, AggregateRow, SeriesResponse, SeriesRowOut, ConnectionBody,
        ConnectionOut, ConnectionResponse, ExportResponse, ExportReadings, ReadingOut,
        ReceiptOut, DeletedOut, KeptOut, BackupRequest, BackupResponse, ErrorBody, ErrorDetail,
    )),
    modifiers(&BearerAuth),
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

static JSON: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
});

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    JSON.clone()
}
