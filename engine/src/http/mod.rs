//! The admin HTTP API (axum, HTTP/1.1): engine and server counters, registry reads and
//! writes, the entry-log queries, Prometheus `/metrics`, the OpenAPI description, and the
//! market console's static files. It runs beside the QUIC front in the same tokio runtime and,
//! like it, only calls the [`Engine`] API.
//!
//! Personal data is behind a bearer token ([`AdminToken`], `DATA/admin.token`); `/`, the
//! console assets, `/healthz`, `/metrics` and `/api/v1/openapi.json` hold none and are open.
//! Every store or engine call runs on `tokio::task::spawn_blocking`, so a slow SQLite read
//! never stalls the async threads that also serve the gates.
//!
//! The routes are one table, [`ROUTES`]: the router is built from it and a test holds it
//! equal to `openapi.json`, so the description cannot drift from what is served.

mod api;
mod error;
pub mod metrics;
mod params;
mod recent;
pub mod token;
mod views;
pub mod whatif;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use gatewarden_protocol::UnixMillis;

pub use error::ApiError;
pub use token::{AdminToken, TokenError};

use crate::Engine;
use crate::clock::{Clock, SystemClock};
use crate::server::ServerStats;

/// The largest request body accepted (bulk subject, health and template uploads).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// What every request handler shares: the engine, the QUIC server's counters, the token.
#[derive(Clone)]
pub struct HttpState(Arc<Inner>);

struct Inner {
    engine: Arc<Engine>,
    server: Arc<ServerStats>,
    token: AdminToken,
    clock: Arc<dyn Clock>,
    started: UnixMillis,
    recent: recent::Recent,
    calibration: Arc<whatif::Calibration>,
}

impl HttpState {
    /// State over a running engine and the counters of its QUIC front
    /// ([`Server::stats`](crate::server::Server::stats); a fresh `ServerStats::default()` when
    /// there is no QUIC front).
    pub fn new(engine: Arc<Engine>, server: Arc<ServerStats>, token: AdminToken) -> Self {
        Self::with_clock(engine, server, token, Arc::new(SystemClock))
    }

    /// [`HttpState::new`] with an explicit clock ("today" and uptime come from it).
    pub fn with_clock(
        engine: Arc<Engine>,
        server: Arc<ServerStats>,
        token: AdminToken,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let started = clock.now();
        let calibration = whatif::Calibration::start(&engine, Arc::clone(&clock));
        Self(Arc::new(Inner {
            engine,
            server,
            token,
            clock,
            started,
            recent: recent::Recent::default(),
            calibration,
        }))
    }

    fn now(&self) -> UnixMillis {
        self.0.clock.now()
    }

    /// Adds one sample to the recent history (`GET /api/v1/stats/history`). [`serve`] calls
    /// it every second; a program serving [`router`] some other way calls it itself.
    pub fn sample_recent(&self) {
        let stats = self.0.engine.stats();
        self.0.recent.record(self.now(), &stats);
    }
}

/// HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// A read.
    Get,
    /// A write.
    Post,
}

impl Method {
    /// The lowercase name, as OpenAPI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
        }
    }
}

/// One route of the API.
#[derive(Clone, Copy)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{name}` parameters (axum 0.8 and OpenAPI spell them alike).
    pub path: &'static str,
    /// Whether the route needs the admin token.
    pub token: bool,
    handler: fn() -> MethodRouter<HttpState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.name(), self.path)
    }
}

macro_rules! route {
    (GET $path:literal, $token:literal, $handler:path) => {
        Route {
            method: Method::Get,
            path: $path,
            token: $token,
            handler: || axum::routing::get($handler),
        }
    };
    (POST $path:literal, $token:literal, $handler:path) => {
        Route {
            method: Method::Post,
            path: $path,
            token: $token,
            handler: || axum::routing::post($handler),
        }
    };
}

/// Every route; the router is built from this table alone.
pub const ROUTES: &[Route] = &[
    route!(GET "/", false, api::console_index),
    route!(GET "/console/app.js", false, api::console_js),
    route!(GET "/console/style.css", false, api::console_css),
    route!(GET "/healthz", false, api::healthz),
    route!(GET "/console/tools.js", false, whatif::console_tools_js),
    route!(GET "/metrics", false, whatif::metrics),
    route!(GET "/api/v1/openapi.json", false, api::openapi),
    route!(GET "/api/v1/stats", true, api::stats),
    route!(GET "/api/v1/stats/history", true, api::stats_history),
    route!(GET "/api/v1/markets", true, api::markets),
    route!(POST "/api/v1/subjects", true, api::post_subjects),
    route!(GET "/api/v1/subjects/{id}", true, api::subject),
    route!(POST "/api/v1/subjects/{id}/templates", true, api::post_templates),
    route!(POST "/api/v1/subjects/{id}/revoke", true, api::post_revoke),
    route!(POST "/api/v1/subjects/{id}/reinstate", true, api::post_reinstate),
    route!(GET "/api/v1/subjects/{id}/trajectory", true, api::trajectory),
    route!(GET "/api/v1/subjects/{id}/verdicts", true, api::verdicts),
    route!(GET "/api/v1/subjects/{id}/frequency", true, api::subject_frequency),
    route!(GET "/api/v1/subjects/{id}/contacts", true, api::contacts),
    route!(GET "/api/v1/subjects/{id}/resolutions", true, api::resolutions),
    route!(POST "/api/v1/health", true, api::post_health),
    route!(GET "/api/v1/markets/{id}/frequency", true, api::market_frequency),
    route!(GET "/api/v1/markets/{id}/signins", true, api::signins),
    route!(GET "/api/v1/markets/{id}/hall", true, api::hall),
    route!(GET "/api/v1/markets/{id}/escalations", true, api::escalations),
    route!(POST "/api/v1/escalations/{gate}/{seq}/resolve", true, api::post_resolve),
    route!(GET "/api/v1/policy", true, api::policy),
    route!(POST "/api/v1/policy/reload", true, api::post_policy_reload),
    route!(POST "/api/v1/policy/replay", true, whatif::post_replay),
    route!(GET "/api/v1/calibration", true, whatif::calibration),
];

/// The OpenAPI 3.1 description of [`ROUTES`].
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The application: every route of [`ROUTES`], the token check on the private ones, a JSON
/// 404 for anything else, and the body limit.
pub fn router(state: HttpState) -> Router {
    let mut open = Router::new();
    let mut private = Router::new();
    for r in ROUTES {
        if r.token {
            private = private.route(r.path, (r.handler)());
        } else {
            open = open.route(r.path, (r.handler)());
        }
    }
    let private = private.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    open.merge(private)
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight
/// finish. Samples the engine's rates every second meanwhile, for the console's sparklines.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = tokio::spawn(sample_every_second(state.clone()));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    served
}

async fn sample_every_second(state: HttpState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(recent::INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        // The snapshot takes the stats locks briefly; keep it off the async threads.
        if let Err(e) = tokio::task::spawn_blocking(move || s.sample_recent()).await {
            tracing::error!(error = %e, "the rate history stopped: sampling failed");
            return;
        }
    }
}

/// Refuses requests without the right `Authorization: Bearer` token.
async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|t| state.0.token.matches(t)) {
        return next.run(request).await;
    }
    let mut response = ApiError::Unauthorized.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;

    #[test]
    fn openapi_describes_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.path.to_owned(), r.method.name().to_owned()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "a route is listed twice");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json documents unserved routes: {extra:?}"
        );
        for r in ROUTES {
            let op = &paths[r.path][r.method.name()];
            let secured = op
                .get("security")
                .and_then(|s| s.as_array())
                .is_some_and(|s| !s.is_empty());
            assert_eq!(
                secured, r.token,
                "{r:?}: security must match the token rule"
            );
            assert!(op["responses"].is_object(), "{r:?} has no responses");
            for p in r.path.split('/').filter_map(|s| s.strip_prefix('{')) {
                let name = p.trim_end_matches('}');
                let params = op["parameters"].as_array().unwrap();
                let described = params
                    .iter()
                    .map(|x| resolve(&doc, x))
                    .any(|x| x["name"] == name && x["in"] == "path" && x["required"] == true);
                assert!(described, "{r:?} does not describe path parameter {name}");
            }
        }
    }

    /// A `$ref` object's target, or the object itself.
    fn resolve<'a>(doc: &'a serde_json::Value, v: &'a serde_json::Value) -> &'a serde_json::Value {
        match v.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => r
                .trim_start_matches("#/")
                .split('/')
                .fold(doc, |node, key| &node[key]),
            None => v,
        }
    }

    fn doc_ref(r: &str) -> serde_json::Value {
        serde_json::json!({ "$ref": r })
    }

    #[test]
    fn check_and_category_names_match_the_protocol() {
        use gatewarden_protocol::{Category, CheckKind};
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        let schemas = &doc["components"]["schemas"];
        let kinds: Vec<String> = CheckKind::ALL.iter().map(|k| k.name().to_owned()).collect();
        assert_eq!(
            names(&schemas["Check"]["properties"]["kind"]["enum"]),
            kinds
        );
        assert_eq!(
            names(&schemas["EntryRow"]["properties"]["failed"]["items"]["enum"]),
            kinds
        );
        let cats: Vec<String> = Category::ALL.iter().map(|c| c.name().to_owned()).collect();
        assert_eq!(
            names(&schemas["Subject"]["properties"]["category"]["enum"]),
            cats
        );
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let schemas: HashSet<&String> = doc["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let mut refs = Vec::new();
        fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            assert!(r.starts_with("#/components/"), "unexpected $ref {r}");
            let reference = doc_ref(r);
            assert!(resolve(&doc, &reference).is_object(), "dangling $ref {r}");
        }
        assert!(schemas.contains(&"Error".to_owned()));
    }
}
