//! `POST /introspect`: RFC 7662 token introspection for relying parties.
//!
//! The caller authenticates first, with exactly one of: HTTP Basic with a client id and
//! secret (`client_secret_basic`), the same as `client_id` and `client_secret` form
//! fields (`client_secret_post`), or a host certificate our CA signed, presented in the
//! TLS handshake (`tls_client_auth`). An unauthenticated or wrongly authenticated caller
//! gets 401 and an answer that does not depend on the token. The answer for a token is
//! the one `leashctl introspect` prints (`revocation::introspect`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::clients;
use super::reply::{self, Body};
use crate::state::Shared;

/// Who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An introspection client, by id.
    Client(String),
    /// An enrolled host, by name (mutual TLS).
    Host(String),
}

/// The form of a request body (`application/x-www-form-urlencoded`), each name once.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if out.iter().any(|(n, _)| *n == k) {
            return Err(format!("the parameter {k:?} is given more than once"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// One form-urlencoded component ('+' is a space).
fn decode(s: &str) -> Result<String, String> {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "a form field is not UTF-8 once decoded".to_string())
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// 401, the same whatever the token: RFC 6749's `invalid_client`, with a Basic
/// challenge.
fn unauthorized(why: &str) -> Response<Body> {
    let mut r = reply::error(StatusCode::UNAUTHORIZED, "invalid_client", why);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"leash-introspect\", charset=\"UTF-8\""),
    );
    r
}

fn bad_request(why: &str) -> Response<Body> {
    reply::error(StatusCode::BAD_REQUEST, "invalid_request", why)
}

/// The client id and secret of an `Authorization: Basic` header (each form-urlencoded,
/// RFC 6749 section 2.3.1); `Err` when the header is there but malformed.
fn basic(headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let (scheme, rest) = v.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let raw = STANDARD.decode(rest.trim()).map_err(|_| ())?;
    let raw = String::from_utf8(raw).map_err(|_| ())?;
    let (id, secret) = raw.split_once(':').ok_or(())?;
    Ok(Some((
        decode(id).map_err(|_| ())?,
        decode(secret).map_err(|_| ())?,
    )))
}

/// Why a caller of `/introspect` is not served. The messages say nothing of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error(
        "authenticate with an introspection client id and secret (HTTP Basic, or client_id \
         and client_secret in the form) or with a host certificate"
    )]
    Missing,
    /// An `Authorization` header that is not Basic with `base64(id:secret)`.
    #[error("malformed Authorization header: use Basic with base64(client_id:client_secret)")]
    MalformedBasic,
    /// Half of `client_secret_post`.
    #[error("client_secret_post needs both client_id and client_secret")]
    IncompletePost,
    /// Basic and form credentials together (RFC 6749 section 2.3).
    #[error(
        "use one client authentication method: HTTP Basic or client_id and client_secret \
         in the form, not both"
    )]
    TwoMethods,
    /// An unknown client id or a wrong secret (which of the two is not said).
    #[error("unknown client or wrong client secret")]
    WrongSecret,
    /// A client certificate of no enrolled host, or of an evicted one.
    #[error("this certificate belongs to no enrolled host (or its host was evicted)")]
    UnknownHost,
    /// The store could not be read.
    #[error("the control plane's store failed; try again")]
    Store,
}

impl AuthError {
    /// The HTTP answer: 401 with a challenge, 400 for two methods, 503 for the store.
    pub fn response(&self) -> Response<Body> {
        match self {
            AuthError::TwoMethods => bad_request(&self.to_string()),
            AuthError::Store => reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &self.to_string(),
            ),
            _ => unauthorized(&self.to_string()),
        }
    }
}

/// Stands in for an unknown client's hash, so an unknown id costs the same as a wrong
/// secret.
const NO_CLIENT_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn check_secret(s: &Shared, id: &str, secret: &str) -> Result<Caller, AuthError> {
    let stored = if clients::valid_client_id(id) {
        s.store.introspection_client(id).map_err(|e| {
            tracing::error!(error = %e, "cannot read introspection clients");
            AuthError::Store
        })?
    } else {
        None
    };
    let hash = stored
        .as_ref()
        .map_or(NO_CLIENT_HASH, |c| c.secret_sha256.as_str());
    let ok = clients::matches(hash, secret);
    match stored {
        Some(c) if ok => Ok(Caller::Client(c.id)),
        _ => {
            tracing::info!(client_id = ?id, "introspection refused: unknown client or wrong secret");
            Err(AuthError::WrongSecret)
        }
    }
}

/// Authenticate the caller of `/introspect`.
pub fn authenticate(
    s: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
    peer_serial: Option<&str>,
) -> Result<Caller, AuthError> {
    let basic = basic(headers).map_err(|()| AuthError::MalformedBasic)?;
    let post = match (field(form, "client_id"), field(form, "client_secret")) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        _ => return Err(AuthError::IncompletePost),
    };
    match (basic, post) {
        (Some(_), Some(_)) => Err(AuthError::TwoMethods),
        (Some((id, secret)), None) => check_secret(s, &id, &secret),
        (None, Some((id, secret))) => check_secret(s, id, secret),
        (None, None) => {
            let serial = peer_serial.ok_or(AuthError::Missing)?;
            match s.store.host_by_serial(serial) {
                Ok(Some(h)) if !h.evicted => Ok(Caller::Host(h.name)),
                Ok(_) => Err(AuthError::UnknownHost),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read hosts");
                    Err(AuthError::Store)
                }
            }
        }
    }
}

/// Whether the request says it carries a form (or says nothing).
fn is_form(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_none_or(|v| {
        v.to_str().is_ok_and(|t| {
            t.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
    })
}

/// `POST /introspect` with its whole `body`.
pub fn serve(
    s: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    peer_serial: Option<&str>,
) -> Response<Body> {
    if !is_form(headers) {
        return reply::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send the request as application/x-www-form-urlencoded (token=...)",
        );
    }
    let form = match parse_form(body) {
        Ok(f) => f,
        Err(why) => return bad_request(&why),
    };
    let caller = match authenticate(s, headers, &form, peer_serial) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let Some(token) = field(&form, "token").filter(|t| !t.trim().is_empty()) else {
        return bad_request("the form needs token=<the token to introspect>");
    };
    let answer = crate::revocation::introspect(s, token);
    tracing::debug!(caller = ?caller, active = answer.active, "introspected a token over HTTPS");
    reply::json_bytes(StatusCode::OK, Bytes::from(answer.json), "no-store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_refuse_repeats() {
        let f = parse_form(
            b"token=a.b.c&token_type_hint=access_token&client_id=x%2By&client_secret=s+t",
        )
        .expect("form");
        assert_eq!(field(&f, "token"), Some("a.b.c"));
        assert_eq!(field(&f, "client_id"), Some("x+y"));
        assert_eq!(field(&f, "client_secret"), Some("s t"));
        assert!(parse_form(b"token=a&token=b").is_err());
        assert!(parse_form(b"token=%FF").is_err());
        assert!(parse_form(&[0xff]).is_err());
        assert_eq!(parse_form(b"").expect("empty"), vec![]);
    }

    #[test]
    fn basic_headers_are_read_or_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(basic(&h), Ok(None));
        let v = STANDARD.encode("aws-sts:leash-ic.abc");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {v}").parse().expect("v"),
        );
        assert_eq!(
            basic(&h),
            Ok(Some(("aws-sts".into(), "leash-ic.abc".into())))
        );
        for bad in [
            "Bearer x",
            "Basic !!!",
            "Basic",
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            h.insert(header::AUTHORIZATION, bad.parse().expect("v"));
            assert_eq!(basic(&h), Err(()), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(is_form(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .expect("v"),
        );
        assert!(is_form(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().expect("v"));
        assert!(!is_form(&h));
    }
}
