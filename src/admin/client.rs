//! The CLI's client of the admin API: posts an operation's request struct, decodes its
//! answer struct or its error, so the CLI cannot tell (and print) the difference from
//! running the operation itself. It goes through the admin socket when the server has
//! one (always, on Unix), and through `server.admin_listen` otherwise.

use std::io::Read;
use std::time::Duration;

use super::backup::Counts;
use super::endpoint::Endpoint;
use super::ops::{AdminError, ExportRequest, Operation};
use crate::secret::Secret;

/// A connection to the running server's admin API.
pub(crate) struct AdminClient {
    agent: ureq::Agent,
    base: String,
    /// Where the API is, for messages: `at <address>` or `on the socket <path>`.
    place: String,
    token: Secret<String>,
}

impl AdminClient {
    /// A client of the server described by `endpoint`.
    pub(crate) fn new(endpoint: &Endpoint) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .max_redirects(0)
            .build();
        #[cfg(unix)]
        if let Some(socket) = &endpoint.socket {
            return AdminClient {
                agent: super::unix::agent(config, socket.clone()),
                // The host names nothing: every request goes to the socket.
                base: "http://localhost".to_string(),
                place: format!("on the admin socket {}", socket.display()),
                token: endpoint.token.clone(),
            };
        }
        AdminClient {
            agent: ureq::Agent::new_with_config(config),
            base: format!("http://{}", endpoint.addr),
            place: format!("at http://{}", endpoint.addr),
            token: endpoint.token.clone(),
        }
    }

    /// Where the API is: `at <address>` or `on the admin socket <path>`.
    pub(crate) fn place(&self) -> &str {
        &self.place
    }

    fn url(&self, path: &str) -> String {
        format!("{}/admin/v1/{path}", self.base)
    }

    fn unreachable(&self, e: &ureq::Error) -> AdminError {
        AdminError::unavailable(format!(
            "the database is in use, but the server's admin API {} cannot be reached: {e}",
            self.place
        ))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        response: ureq::http::Response<ureq::Body>,
    ) -> Result<T, AdminError> {
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| self.unreachable(&e))?;
        if status == 200 {
            serde_json::from_slice(&body).map_err(|e| {
                AdminError::internal(format!("the admin API answered something unexpected: {e}"))
            })
        } else {
            Err(
                serde_json::from_slice::<AdminError>(&body).unwrap_or_else(|_| {
                    AdminError::internal(format!("the admin API answered HTTP {status}"))
                }),
            )
        }
    }

    /// Runs `op` on the server.
    pub(crate) fn call<O: Operation>(&self, op: &O) -> Result<O::Output, AdminError> {
        let body = serde_json::to_vec(op).expect("admin requests serialize");
        let response = self
            .agent
            .post(&self.url(O::PATH))
            .header("authorization", &format!("Bearer {}", self.token.expose()))
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| self.unreachable(&e))?;
        self.decode(response)
    }

    /// Starts an export on the server; the answer is read as it streams.
    pub(crate) fn export(&self, request: ExportRequest) -> Result<impl Read + 'static, AdminError> {
        let body = serde_json::to_vec(&request).expect("admin requests serialize");
        let response = self
            .agent
            .post(&self.url("export"))
            .header("authorization", &format!("Bearer {}", self.token.expose()))
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| self.unreachable(&e))?;
        if response.status().as_u16() != 200 {
            return Err(self.decode::<()>(response).unwrap_err());
        }
        Ok(response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader())
    }

    /// Sends an export file to the server to import.
    pub(crate) fn import(&self, file: &mut dyn Read, merge: bool) -> Result<Counts, AdminError> {
        let response = self
            .agent
            .post(&self.url(&format!("import?merge={merge}")))
            .header("authorization", &format!("Bearer {}", self.token.expose()))
            .header("content-type", "application/x-ndjson")
            .send(ureq::SendBody::from_reader(file))
            .map_err(|e| self.unreachable(&e))?;
        self.decode(response)
    }
}
