//! The admin endpoint file: where the running server's admin API listens and the token
//! it accepts, written beside the database (`<storage.path>.admin-token`, mode 0600).
//!
//! The server writes a fresh token (32 bytes from the OS CSPRNG) at every start and
//! removes the file when it stops. Whoever can read the file can administer the server,
//! exactly as whoever can read the database directory can; the file mode keeps it to the
//! server's own user. The bound address is in the file too, so a CLI finds a server
//! listening on a port picked at start (`admin_listen = "127.0.0.1:0"`), and so is the
//! admin socket (`<storage.path>.admin.sock`, on Unix), which the CLI uses instead of
//! the TCP port: any local user can open connections to a loopback port and fill its
//! per-address cap, while only the server's own user can connect to the socket.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::ops::AdminError;
use crate::primitives::{hex, random_bytes};
use crate::secret::Secret;
use crate::store::private::create_new;

/// Contents of the endpoint file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    /// The bound admin address.
    pub addr: SocketAddr,
    /// The admin token (64 hex digits).
    pub token: Secret<String>,
    /// The admin socket, when the server listens on one.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The endpoint file of the database at `db`.
pub(crate) fn path_for(db: &Path) -> PathBuf {
    beside(db, ".admin-token")
}

/// The admin socket of the database at `db`.
pub(crate) fn socket_for(db: &Path) -> PathBuf {
    beside(db, ".admin.sock")
}

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Endpoint {
    /// A fresh random token for `addr` and, when given, the admin socket.
    pub(crate) fn generate(addr: SocketAddr, socket: Option<PathBuf>) -> Self {
        Endpoint {
            addr,
            token: Secret::new(hex(&random_bytes::<32>())),
            socket,
        }
    }

    /// Writes the file with mode 0600: to a temporary name first, then renamed, so a
    /// reader never sees half a file.
    pub(crate) fn write(&self, file: &Path) -> std::io::Result<()> {
        let partial = {
            let mut name = file.as_os_str().to_owned();
            name.push(".partial");
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(&partial);
        let mut out = create_new(&partial)?;
        let json = serde_json::json!({
            "addr": self.addr,
            "token": self.token.expose(),
            "socket": self.socket,
        });
        out.write_all(json.to_string().as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&partial, file)
    }

    /// Reads the file a running server wrote.
    pub(crate) fn read(file: &Path) -> Result<Endpoint, AdminError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            AdminError::unavailable(format!(
                "the database is in use by another process, but its admin endpoint file {} \
                 cannot be read ({e}); is the server still starting, or run as another user?",
                file.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|_| {
            AdminError::unavailable(format!(
                "the admin endpoint file {} is not valid",
                file.display()
            ))
        })
    }

    /// Whether `presented` is this token, compared in constant time.
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        let expected = self.token.expose().as_bytes();
        let presented = presented.as_bytes();
        expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = path_for(&dir.path().join("db"));
        assert!(file.to_string_lossy().ends_with("db.admin-token"));
        let socket = socket_for(&dir.path().join("db"));
        assert!(socket.to_string_lossy().ends_with("db.admin.sock"));
        let endpoint = Endpoint::generate("127.0.0.1:9".parse().unwrap(), Some(socket.clone()));
        endpoint.write(&file).unwrap();
        endpoint.write(&file).unwrap(); // overwrites a stale file
        let read = Endpoint::read(&file).unwrap();
        assert_eq!(read.addr, endpoint.addr);
        assert_eq!(read.socket, Some(socket));
        assert!(read.accepts(endpoint.token.expose()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_file_without_a_socket_names_the_port_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = path_for(&dir.path().join("db"));
        std::fs::write(&file, r#"{"addr":"127.0.0.1:9","token":"ab"}"#).unwrap();
        let read = Endpoint::read(&file).unwrap();
        assert_eq!(read.socket, None);
        assert!(read.accepts("ab"));
    }

    #[test]
    fn only_the_exact_token_is_accepted() {
        let endpoint = Endpoint::generate("127.0.0.1:9".parse().unwrap(), None);
        let token = endpoint.token.expose().clone();
        assert!(endpoint.accepts(&token));
        assert!(!endpoint.accepts(""));
        assert!(!endpoint.accepts(&token[1..]));
        assert!(!endpoint.accepts(&format!("{token}0")));
        assert!(!endpoint.accepts(&token.to_uppercase()));
    }
}
