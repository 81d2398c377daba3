//! `tls CERT KEY [CA] { client_auth nocert|request|require|verify_if_given|require_and_verify }`,
//! as CoreDNS 1.14.7's `plugin/tls/tls.go` reads it. `keylog` and the ACME
//! form (`tls { acme … }`) are refused.

use std::path::PathBuf;

use crate::dispenser::{Dispenser, SetupError};

/// Whether and how a client must present a certificate (Go's
/// `tls.ClientAuthType`, as CoreDNS names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No certificate asked for (`nocert`, the default).
    #[default]
    NoCert,
    /// One asked for, not required, not verified (`request`).
    Request,
    /// One required, not verified (`require`).
    Require,
    /// Verified against the CA when given (`verify_if_given`).
    VerifyIfGiven,
    /// Required and verified against the CA (`require_and_verify`).
    RequireAndVerify,
}

/// What a `tls` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA that client certificates are verified against, PEM; without
    /// it, the system's roots (as CoreDNS).
    pub ca: Option<PathBuf>,
    /// The client certificate policy.
    pub client_auth: ClientAuth,
}

/// Reads the block's `tls` directive.
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<TlsConfig, SetupError> {
    let mut out: Option<TlsConfig> = None;
    while d.next() {
        if out.is_some() {
            return Err(d.err("TLS already configured for this server instance"));
        }
        let args = d.remaining_args();
        if args.is_empty() {
            return Err(d.err("automatic certificates (acme) not supported"));
        }
        if args.len() < 2 || args.len() > 3 {
            return Err(d.arg_err());
        }
        let mut client_auth = ClientAuth::NoCert;
        while d.next_block() {
            match d.val() {
                "client_auth" => {
                    let v = d.remaining_args();
                    if v.len() != 1 {
                        return Err(d.arg_err());
                    }
                    client_auth = match v[0].as_str() {
                        "nocert" => ClientAuth::NoCert,
                        "request" => ClientAuth::Request,
                        "require" => ClientAuth::Require,
                        "verify_if_given" => ClientAuth::VerifyIfGiven,
                        "require_and_verify" => ClientAuth::RequireAndVerify,
                        other => {
                            return Err(
                                d.err(format_args!("unknown authentication type '{other}'"))
                            );
                        }
                    };
                }
                "keylog" => return Err(d.unsupported()),
                other => return Err(d.err(format_args!("unknown option '{other}'"))),
            }
        }
        let mut args = args.into_iter().map(PathBuf::from);
        let (Some(cert), Some(key)) = (args.next(), args.next()) else {
            return Err(d.arg_err());
        };
        out = Some(TlsConfig {
            cert,
            key,
            ca: args.next(),
            client_auth,
        });
    }
    out.ok_or_else(|| d.arg_err())
}
