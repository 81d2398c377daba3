//! Who may use the admin plane, and where it listens.
//!
//! - [`listen_addr`] parses `--admin` (`off`, `HOST:PORT`, `:PORT`) and
//!   refuses a non-loopback address without a token: the admin plane can
//!   replace the running Corefile, so only the node itself may reach it
//!   unauthenticated.
//! - [`Token::from_file`] reads `--admin-token-file`.
//! - With a token, every request needs `Authorization: Bearer <token>`:
//!   REST, gRPC, reflection, and `/healthz` and `/readyz` too. Kubernetes
//!   probes should use the DNS side's `health` and `ready` plugins, which
//!   stay unauthenticated as in CoreDNS; the admin plane is a control
//!   surface, and one rule for every path leaves nothing to forget.
//!   The comparison is constant-time ([`subtle`]).

use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use crate::rest::{ApiError, is_grpc};

/// `--admin`'s default: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8053";

/// A token file is one line; anything larger is a mistake (a wrong path),
/// not a token, and is refused before it is read whole.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// The bearer token that guards the admin plane.
///
/// Printable ASCII without spaces (`0x21..=0x7e`), so it fits an HTTP
/// header and gRPC metadata unchanged. `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text. Refuses an empty token, and characters that
    /// cannot travel in a header.
    pub fn new(text: impl Into<String>) -> Result<Self, TokenError> {
        let text = text.into();
        if text.is_empty() {
            return Err(TokenError::Empty { path: None });
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid { path: None });
        }
        Ok(Self(text.into()))
    }

    /// Reads `--admin-token-file`: the token is the file's text without
    /// trailing whitespace (a final newline from an editor or
    /// `echo > file`), at most [`MAX_TOKEN_FILE`] bytes.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let read_err = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut raw = Vec::new();
        // One byte past the cap tells "too large" from "exactly the cap".
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        if raw.len() as u64 > MAX_TOKEN_FILE {
            return Err(TokenError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::str::from_utf8(&raw).map_err(|_| TokenError::Invalid {
            path: Some(path.to_path_buf()),
        })?;
        let with_path = |e| match e {
            TokenError::Empty { .. } => TokenError::Empty {
                path: Some(path.to_path_buf()),
            },
            TokenError::Invalid { .. } => TokenError::Invalid {
                path: Some(path.to_path_buf()),
            },
            other => other,
        };
        Self::new(text.trim_end()).map_err(with_path)
    }

    /// The token's text, for a client that sends it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Authorization` header value for this token.
    pub(crate) fn header_value(&self) -> HeaderValue {
        // The bytes were checked to be printable ASCII in `new`.
        HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("invariant: a token is printable ASCII")
    }

    /// Whether a request's headers carry this token. The token bytes are
    /// compared in constant time; only their length can show.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err("admin: this admin plane needs Authorization: Bearer <token>");
        };
        let value = value.as_bytes();
        // RFC 9110: the scheme is case-insensitive.
        let presented = match value.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => return Err("admin: Authorization must be `Bearer <token>`"),
        };
        if bool::from(presented.ct_eq(self.0.as_bytes())) {
            Ok(())
        } else {
            Err("admin: wrong bearer token")
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("admin: reading token file {}: {source}", path.display())]
    Read {
        /// `--admin-token-file`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_TOKEN_FILE`].
    #[error(
        "admin: token file {} is larger than {MAX_TOKEN_FILE} bytes; it should hold one token",
        path.display()
    )]
    TooLarge {
        /// `--admin-token-file`.
        path: PathBuf,
    },
    /// Nothing but whitespace.
    #[error("admin: {} is empty; put a token in it", where_(path))]
    Empty {
        /// `--admin-token-file`, when the token came from a file.
        path: Option<PathBuf>,
    },
    /// A character that cannot travel in an HTTP header.
    #[error(
        "admin: {} holds a character other than printable ASCII (spaces included); \
         use a token such as the output of `head -c 32 /dev/urandom | base64`",
        where_(path)
    )]
    Invalid {
        /// `--admin-token-file`, when the token came from a file.
        path: Option<PathBuf>,
    },
}

fn where_(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("token file {}", p.display()),
        None => "the token".into(),
    }
}

/// Why an `--admin` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// Not `off`, `HOST:PORT` or `:PORT`.
    #[error(
        "admin: invalid --admin '{0}': expected off, IP:PORT, [IPv6]:PORT, localhost:PORT or :PORT"
    )]
    Syntax(String),
    /// A non-loopback address without `--admin-token-file`.
    #[error(
        "admin: refusing to serve {0} without --admin-token-file: a non-loopback admin address needs a token"
    )]
    NeedsToken(SocketAddr),
}

/// Parses `--admin`: `off` (no admin plane: `None`), `IP:PORT`,
/// `[IPv6]:PORT`, `localhost:PORT` (127.0.0.1), or `:PORT` (every IPv4
/// address, 0.0.0.0). Host names other than `localhost` are refused: a
/// DNS server should not need DNS to start.
pub fn parse_addr(value: &str) -> Result<Option<SocketAddr>, AddrError> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let syntax = || AddrError::Syntax(value.to_string());
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(syntax)?;
    let port: u16 = port.parse().map_err(|_| syntax())?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        h if h.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => return Err(syntax()),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Whether only this node can reach `addr` (127.0.0.0/8, `::1`, and
/// IPv4-mapped loopback).
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Refuses to expose the admin plane beyond the node without a token.
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> Result<(), AddrError> {
    if has_token || is_loopback(addr) {
        Ok(())
    } else {
        Err(AddrError::NeedsToken(addr))
    }
}

/// What the agent calls at start with `--admin` and whether
/// `--admin-token-file` was given: the address to bind, or `None` for
/// `off`.
///
/// ```
/// use nodedns_admin::auth::listen_addr;
/// assert_eq!(listen_addr("off", false), Ok(None));
/// assert!(listen_addr("127.0.0.1:8053", false).unwrap().is_some());
/// assert_eq!(
///     listen_addr(":8053", false).unwrap_err().to_string(),
///     "admin: refusing to serve 0.0.0.0:8053 without --admin-token-file: \
///      a non-loopback admin address needs a token"
/// );
/// ```
pub fn listen_addr(value: &str, has_token: bool) -> Result<Option<SocketAddr>, AddrError> {
    let addr = parse_addr(value)?;
    if let Some(addr) = addr {
        check_exposure(addr, has_token)?;
    }
    Ok(addr)
}

/// Middleware: every request must carry the token. gRPC calls get
/// `UNAUTHENTICATED`, everything else 401 JSON.
pub(crate) async fn require_token(
    State(token): State<Token>,
    request: Request,
    next: Next,
) -> Response {
    match token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(why) if is_grpc(request.headers()) => tonic::Status::unauthenticated(why).into_http(),
        Err(why) => {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"nodedns-admin\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn addresses() {
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            ("off", Ok(None)),
            ("OFF", Ok(None)),
            ("127.0.0.1:8053", Ok(Some("127.0.0.1:8053"))),
            ("[::1]:8053", Ok(Some("[::1]:8053"))),
            ("localhost:9000", Ok(Some("127.0.0.1:9000"))),
            (":8053", Ok(Some("0.0.0.0:8053"))),
            ("0.0.0.0:8053", Ok(Some("0.0.0.0:8053"))),
            ("127.0.0.1:0", Ok(Some("127.0.0.1:0"))),
            ("", Err(())),
            ("8053", Err(())),
            ("127.0.0.1", Err(())),
            ("127.0.0.1:", Err(())),
            ("127.0.0.1:70000", Err(())),
            ("admin.example.org:8053", Err(())),
            ("::1:8053", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_addr(input).map_err(|_| ());
            let want = want.map(|o| o.map(|a| a.parse::<SocketAddr>().unwrap()));
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn non_loopback_needs_a_token() {
        for a in ["0.0.0.0:8053", ":8053", "192.0.2.1:8053", "[::]:8053"] {
            let err = listen_addr(a, false).unwrap_err();
            assert!(matches!(err, AddrError::NeedsToken(_)), "{a}: {err}");
            assert!(err.to_string().contains("--admin-token-file"), "{err}");
            assert!(listen_addr(a, true).unwrap().is_some(), "{a}");
        }
        for a in [
            "127.0.0.1:8053",
            "127.1.2.3:1",
            "[::1]:8053",
            "[::ffff:127.0.0.1]:8053",
        ] {
            assert!(listen_addr(a, false).unwrap().is_some(), "{a}");
        }
        assert_eq!(listen_addr("off", false), Ok(None));
    }

    #[test]
    fn tokens() {
        assert!(matches!(Token::new(""), Err(TokenError::Empty { .. })));
        assert!(matches!(Token::new("a b"), Err(TokenError::Invalid { .. })));
        assert!(matches!(Token::new("é"), Err(TokenError::Invalid { .. })));
        let t = Token::new("s3cr3t").unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(t.header_value(), "Bearer s3cr3t");
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("nodedns-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, body: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let ok = write("ok", b"s3cr3t \r\n\n");
        assert_eq!(Token::from_file(&ok).unwrap().as_str(), "s3cr3t");
        let empty = write("empty", b" \n");
        let e = Token::from_file(&empty).unwrap_err();
        assert!(matches!(e, TokenError::Empty { path: Some(_) }), "{e}");
        assert!(e.to_string().contains("empty"), "{e}");
        let big = write("big", &[b'a'; MAX_TOKEN_FILE as usize + 1]);
        assert!(matches!(
            Token::from_file(&big),
            Err(TokenError::TooLarge { .. })
        ));
        let at_cap = write("cap", &[b'a'; MAX_TOKEN_FILE as usize]);
        assert!(Token::from_file(&at_cap).is_ok());
        let inner_space = write("space", b"two words\n");
        assert!(matches!(
            Token::from_file(&inner_space),
            Err(TokenError::Invalid { .. })
        ));
        let binary = write("bin", &[0xff, 0xfe]);
        assert!(matches!(
            Token::from_file(&binary),
            Err(TokenError::Invalid { .. })
        ));
        let missing = dir.join("missing");
        let e = Token::from_file(&missing).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bearer_check() {
        let t = Token::new("s3cr3t").unwrap();
        assert!(t.check(&headers(&["Bearer s3cr3t"])).is_ok());
        assert!(t.check(&headers(&["bearer s3cr3t"])).is_ok());
        assert!(t.check(&headers(&["BEARER  s3cr3t "])).is_ok());
        assert!(t.check(&headers(&[])).is_err());
        assert!(t.check(&headers(&["Bearer s3cr3"])).is_err());
        assert!(t.check(&headers(&["Bearer s3cr3t2"])).is_err());
        assert!(t.check(&headers(&["Basic s3cr3t"])).is_err());
        assert!(t.check(&headers(&["s3cr3t"])).is_err());
        assert!(t.check(&headers(&["Bearer"])).is_err());
        assert!(
            t.check(&headers(&["Bearer s3cr3t", "Bearer s3cr3t"]))
                .is_err()
        );
    }
}
