//! A real server on 127.0.0.1:0 over a temporary data directory, and a client.

use std::time::Duration;

use refold::api::Tokens;
use refold::runtime::{CompileConfig, RuntimeConfig};
use refold::server::{self, RunningServer, ServeConfig};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::Value;

pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub client: Client,
    pub token: Option<String>,
}

pub fn config(dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::new(dir, "127.0.0.1:0".parse().unwrap());
    config.runtime = RuntimeConfig {
        fuel_per_call: 200_000_000,
        deadline: Duration::from_secs(10),
        memory_bytes: 32 << 20,
        compile: compile_config(),
        ..RuntimeConfig::default()
    };
    config.limits.max_module_bytes = 4 << 20;
    config.limits.max_command_bytes = 16 << 10;
    config
}

/// Compilation as `refold serve` does it: in worker processes of the real binary.
pub fn compile_config() -> CompileConfig {
    CompileConfig {
        worker: Some(env!("CARGO_BIN_EXE_refold").into()),
        ..CompileConfig::default()
    }
}

impl TestServer {
    pub async fn start(dir: &std::path::Path) -> TestServer {
        TestServer::start_with(config(dir)).await
    }

    pub async fn start_with(config: ServeConfig) -> TestServer {
        let token = config.tokens.admin.first().cloned();
        let server = server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        TestServer {
            server,
            base,
            client: Client::new(),
            token,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    pub async fn upload(&self, name: &str, version: &str, path: &str) -> Response {
        let bytes = std::fs::read(path).expect("guest built");
        self.request(
            Method::PUT,
            &format!("/v1/modules/{name}/{version}?activate=true"),
        )
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap()
    }

    pub async fn send(&self, aggregate_type: &str, id: &str, command: &str) -> Response {
        self.request(
            Method::POST,
            &format!("/v1/aggregates/{aggregate_type}/{id}/commands"),
        )
        .header("content-type", "application/json")
        .body(command.to_string())
        .send()
        .await
        .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.request(Method::GET, path).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }
}

/// Reads a response as a problem and checks its status and code.
pub async fn expect_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "problem content type for {code}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "problem code in {body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a detail sentence: {body}"
    );
    body
}

pub fn tokens() -> Tokens {
    Tokens {
        admin: vec!["admin-secret".into()],
        writer: vec!["writer-secret".into()],
        reader: vec!["reader-secret".into()],
    }
}
