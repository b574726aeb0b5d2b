//! [`EtcdAccess`]: where the etcd cluster is and how a group member or a
//! sender proves who it is to it — client URLs, TLS (the cluster's CA, a
//! client certificate) and etcd's user/password authentication.
//!
//! Built once from the command line (or by a library user) and handed to
//! [`Group::connect`](crate::Group::connect), which turns it into the etcd
//! client's connection options.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::GroupError;

/// Longest wait for one etcd request of a standby or a sender (a leader's
/// requests are bounded by its lease instead).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection to an etcd member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach and authenticate to an etcd cluster.
///
/// Plain `http://` endpoints by default. With a CA ([`with_ca`](Self::with_ca))
/// every endpoint must be `https://` and the members' certificates must be
/// signed by that CA (the system's roots are not consulted); a client
/// certificate ([`with_client_identity`](Self::with_client_identity)) is
/// for clusters that require one. With a user
/// ([`with_user`](Self::with_user)) the client authenticates and renews
/// its token when etcd lets it expire.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    endpoints: Vec<String>,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    /// Never shows the password or the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("endpoints", &self.endpoints)
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl EtcdAccess {
    /// The cluster at `endpoints` (client URLs of any of its members).
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdAccess {
            endpoints,
            ..EtcdAccess::default()
        }
    }

    /// Trust the members' certificates signed by this CA (PEM).
    pub fn with_ca(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Present this client certificate and its private key (both PEM).
    pub fn with_client_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.identity_pem = Some((cert_pem, key_pem));
        self
    }

    /// Authenticate as etcd user `name` with `password`.
    pub fn with_user(mut self, name: String, password: String) -> Self {
        self.user = Some((name, password));
        self
    }

    /// The client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The etcd client's options for this access: timeouts, TLS, user.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, GroupError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some((name, password)) = &self.user {
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let tls = self.ca_pem.is_some() || self.identity_pem.is_some();
        let https = |e: &String| e.starts_with("https://");
        if tls {
            let Some(ca) = &self.ca_pem else {
                return Err(GroupError::Tls(
                    "a client certificate needs the cluster's CA as well".into(),
                ));
            };
            if let Some(plain) = self.endpoints.iter().find(|e| !https(e)) {
                return Err(GroupError::Tls(format!(
                    "TLS needs https:// endpoints, not {plain}"
                )));
            }
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity_pem {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        } else if let Some(secure) = self.endpoints.iter().find(|e| https(e)) {
            return Err(GroupError::Tls(format!(
                "{secure} needs the cluster's CA certificate to verify the members"
            )));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(access: &EtcdAccess) -> String {
        match access.connect_options() {
            Err(GroupError::Tls(why)) => why,
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }

    #[test]
    fn tls_settings_and_the_url_scheme_must_agree() {
        let plain = EtcdAccess::new(vec!["http://127.0.0.1:2379".into()]);
        assert!(plain.connect_options().is_ok());
        let ca = plain.clone().with_ca(b"not checked here".to_vec());
        assert!(refused(&ca).contains("https://"));
        let secure = EtcdAccess::new(vec!["https://127.0.0.1:2379".into()]);
        assert!(refused(&secure).contains("CA"));
        let no_ca = secure.with_client_identity(b"c".to_vec(), b"k".to_vec());
        assert!(refused(&no_ca).contains("CA"));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let access = EtcdAccess::new(vec!["http://127.0.0.1:2379".into()])
            .with_user("member".into(), "hunter2".into());
        let shown = format!("{access:?}");
        assert!(shown.contains("member"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
