//! An HTTP client for the service's API, on reqwest (rustls). Async; a synchronous test
//! drives it with its runtime's `block_on`.

use std::net::SocketAddr;
use std::time::Duration;

/// A status and a body read to the end as text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// A client bound to one server.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http::with_base(format!("http://{addr}"))
    }

    pub fn with_base(base: String) -> Http {
        // The workspace builds reqwest without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Http { base, client }
    }

    /// A client of `base` over an already built reqwest client (e.g. [`crate::https_client`]).
    pub fn with_client(base: String, client: reqwest::Client) -> Http {
        Http { base, client }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with an optional bearer token and JSON body; `None` when the server
    /// cannot be reached or the answer breaks off.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<Response> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().await.ok()?;
        Some(Response { status, body })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Option<Response> {
        self.request("GET", path, token, None).await
    }

    /// One sample of `name` (with its labels, exactly as exposed) from `/metrics`.
    pub async fn metric(&self, name: &str, token: Option<&str>) -> Option<f64> {
        let text = self.get("/metrics", token).await?.body;
        parse_metric(&text, name)
    }
}

/// The value of the sample named exactly `name` in a Prometheus exposition.
pub fn parse_metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}
