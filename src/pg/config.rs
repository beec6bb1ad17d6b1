//! How to reach the lock server, read the way libpq reads it: a connection
//! string (`key=value` pairs or a `postgres://` URL) completed from the
//! `PG*` environment and the password file, with libpq's TLS settings
//! (`sslmode` up to `verify-full`, `sslrootcert`, `sslcert`, `sslkey`),
//! which `tokio-postgres` does not take itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::Config;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    /// Taken as `prefer`: TLS whenever the server offers it.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the certificates that may sign the server's come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file (`sslrootcert=PATH`).
    File(PathBuf),
    /// The system's store (`sslrootcert=system`).
    System,
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    pub(crate) roots: Option<Roots>,
    /// A client certificate chain and its key (PEM files).
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// A parsed connection: `tokio-postgres`'s configuration, and the TLS
/// settings it does not take.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) config: Config,
    pub(crate) tls: Tls,
}

/// The libpq keys this module takes over (and `tokio-postgres` refuses or
/// reads too narrowly).
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Keys libpq has that this crate cannot honour: refused, rather than
/// silently ignored (a user who sets them expects them to matter).
const UNSUPPORTED: [&str; 4] = ["sslpassword", "sslcrl", "sslcrldir", "gssencmode"];

/// Whether `s`, a `key=value` connection string, reads as one: for a
/// caller that adds a pair of its own, which must not hide the user's
/// mistake (an unclosed quote would take it in).
pub(crate) fn reads_as_key_values(s: &str) -> bool {
    key_values(s).is_ok()
}

/// Why a connection string was refused. Never contains a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

impl Connection {
    /// Parses `s` and completes it from `env` (libpq's environment) as libpq
    /// does: a key the string does not give is taken from the environment;
    /// a missing password from the password file.
    pub(crate) fn parse(s: &str, env: &Env) -> Result<Connection, Invalid> {
        let (mut pairs, url) = split(s)?;
        for key in UNSUPPORTED {
            if pairs.contains_key(key) {
                return Err(Invalid(format!("the `{key}` setting is not supported")));
            }
        }
        let mut tls_values: BTreeMap<&str, String> = BTreeMap::new();
        for key in TLS_KEYS {
            if let Some(v) = pairs.remove(key).or_else(|| env.tls_default(key)) {
                tls_values.insert(key, v);
            }
        }
        let mode = match tls_values.get("sslmode") {
            Some(m) => SslMode::parse(m)
                .ok_or_else(|| Invalid("`sslmode` is not one of disable, allow, prefer, require, verify-ca, verify-full".into()))?,
            None => SslMode::Prefer,
        };
        let roots = tls_values.get("sslrootcert").map(|r| {
            if r == "system" {
                Roots::System
            } else {
                Roots::File(PathBuf::from(r))
            }
        });
        let client = match (tls_values.get("sslcert"), tls_values.get("sslkey")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => return Err(Invalid("`sslcert` and `sslkey` go together".into())),
        };
        // libpq: with a root certificate at hand (named, or the default
        // `~/.postgresql/root.crt` when that file exists), `require` checks
        // the chain as `verify-ca` does.
        let roots = match (mode, roots) {
            (SslMode::Require, None) => env
                .home
                .as_ref()
                .map(|home| home.join(".postgresql/root.crt"))
                // As libpq: one that exists but cannot be read (a
                // directory) fails the connect rather than be skipped.
                .filter(|default| default.exists())
                .map(Roots::File),
            (_, named) => named,
        };
        let mode = match (mode, &roots) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let rest = match url {
            Some(url) => url.without_query_keys(&TLS_KEYS),
            None => join(&pairs),
        };
        let mut config = Config::from_str(&rest).map_err(|e| Invalid(describe(&e)))?;
        // A URL's user part ends at its first `@`: the rest of a password
        // that holds a bare one would be taken for the host, and shown in
        // every lock id, error and log line. No host name holds an `@`.
        let at_in_host = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Tcp(h) if h.contains('@')));
        if at_in_host {
            return Err(Invalid(
                "a host name holds an `@`: a password (or user name) with an `@` in a URL must \
                 write it `%40`"
                    .into(),
            ));
        }
        env.complete(&mut config, |key| pairs.contains_key(key))?;
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(Connection {
            config,
            tls: Tls {
                mode,
                roots,
                client,
            },
        })
    }

    /// The server as `HOST:PORT` (the first one), for lock names and errors.
    pub(crate) fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            // Reached by address alone (`hostaddr`): named by it.
            None => match self.config.get_hostaddrs().first() {
                Some(addr) => addr.to_string(),
                None => "localhost".into(),
            },
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// The database, for lock names and errors.
    pub(crate) fn database(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_string()
    }
}

/// What `tokio-postgres` said about a string it refused, without the
/// string's contents (its messages can quote a piece of a value, and a
/// value may be a password).
fn describe(e: &tokio_postgres::Error) -> String {
    let text = e.to_string();
    let mut source = std::error::Error::source(e).map(|s| s.to_string());
    // "unknown option `x`" and "invalid value for option `x`" name only a
    // key, which is safe; anything else may quote a value.
    if let Some(s) = &source {
        if !(s.starts_with("unknown option") || s.starts_with("invalid value for option")) {
            source = None;
        }
    }
    match source {
        Some(s) => format!("the connection string does not parse: {s}"),
        None => format!("the connection string does not parse ({text})"),
    }
}

/// A URL, kept as text, with its query parameters apart.
struct Url {
    base: String,
    query: Vec<(String, String)>,
}

impl Url {
    fn without_query_keys(&self, keys: &[&str]) -> String {
        let kept: Vec<String> = self
            .query
            .iter()
            .filter(|(k, _)| !keys.contains(&k.as_str()))
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        if kept.is_empty() {
            self.base.clone()
        } else {
            format!("{}?{}", self.base, kept.join("&"))
        }
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The string's settings as pairs (for a URL: its query parameters, the
/// rest being kept as the URL itself).
fn split(s: &str) -> Result<(BTreeMap<String, String>, Option<Url>), Invalid> {
    let trimmed = s.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let (base, query) = match trimmed.split_once('?') {
            Some((b, q)) => (b.to_string(), q),
            None => (trimmed.to_string(), ""),
        };
        // A password with a bare `@`, `/` or `?` splits where libpq splits:
        // its pieces would be read as a host, a database or a parameter's
        // name, and shown in every lock id and error. None of those holds an
        // `@`, and no parameter's name holds anything but letters, digits
        // and `_`. The refusal quotes nothing.
        let odd_name = query.split('&').any(|part| {
            let name = part.split_once('=').map_or(part, |(k, _)| k);
            !percent_encoding::percent_decode_str(name)
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if base.matches('@').count() > 1 || odd_name {
            return Err(Invalid(
                "the URL does not parse as one: a password (or user name) with an `@`, `/` or `?` \
                 in a URL must write it percent-encoded (`%40`, `%2F`, `%3F`)"
                    .into(),
            ));
        }
        let mut pairs = BTreeMap::new();
        let mut list = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let decode = |x: &str| {
                percent_encoding::percent_decode_str(x)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| Invalid("a URL parameter is not UTF-8".into()))
            };
            let (k, v) = (decode(k)?, decode(v)?);
            pairs.insert(k.clone(), v.clone());
            list.push((k, v));
        }
        Ok((pairs, Some(Url { base, query: list })))
    } else {
        Ok((key_values(trimmed)?, None))
    }
}

/// Whether the string itself gives a non-empty password: in a URL's user
/// information (`user:password@`, up to the first `@`, as tokio-postgres
/// reads it) or its `password` parameter, or as a `password` key. A string
/// that does not parse is suspected when it mentions `password` at all, or
/// is a URL with a `:` before its last `@` (a password holding a bare `@`
/// or `?` is what makes a URL fail to parse).
pub(crate) fn carries_password(s: &str) -> bool {
    password_as_libpq_reads(s) || carries_password_as_parsed(s)
}

/// Whether a URL gives a password as libpq reads its user information: up
/// to the first `@` that comes before any `/` after the scheme, whatever
/// is between (a `?` too: `postgres://app:pa?ss=x@db/app`, which the
/// parse below takes for a parameter).
fn password_as_libpq_reads(s: &str) -> bool {
    let t = s.trim();
    let Some(rest) = t
        .strip_prefix("postgres://")
        .or_else(|| t.strip_prefix("postgresql://"))
    else {
        return false;
    };
    match rest.find(['@', '/']) {
        Some(at) if rest[at..].starts_with('@') => rest[..at]
            .split_once(':')
            .is_some_and(|(_, password)| !password.is_empty()),
        _ => false,
    }
}

fn carries_password_as_parsed(s: &str) -> bool {
    match split(s) {
        Ok((pairs, url)) => {
            let in_userinfo = url.is_some_and(|u| {
                let rest = u.base.split_once("://").map_or("", |(_, r)| r);
                rest.split_once('@')
                    .and_then(|(userinfo, _)| userinfo.split_once(':'))
                    .is_some_and(|(_, password)| !password.is_empty())
            });
            in_userinfo || pairs.get("password").is_some_and(|p| !p.is_empty())
        }
        Err(_) => {
            let userinfo = s
                .split_once("://")
                .and_then(|(_, rest)| rest.rsplit_once('@'))
                .map_or("", |(userinfo, _)| userinfo);
            s.contains("password") || userinfo.contains(':')
        }
    }
}

/// libpq's `key = value` syntax: whitespace between pairs, values either
/// bare or in single quotes, with backslash escapes in both.
fn key_values(s: &str) -> Result<BTreeMap<String, String>, Invalid> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    let mut word = 0;
    loop {
        word += 1;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // Not shown: a word where a key should be may be a password
            // whose `password=` was left out.
            return Err(Invalid(format!(
                "word {word} of the connection string has no `=` after it (`key=value` pairs \
                 are expected; the word is not shown, as it may be a secret)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| {
                        Invalid(format!("the value of `{key}` ends in a backslash"))
                    })?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Invalid(format!(
                            "the value of `{key}` has no closing quote"
                        )))
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.insert(key, value);
    }
}

/// Pairs back into libpq syntax, every value quoted.
fn join(pairs: &BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// libpq's environment: the `PG*` variables and the password file, read at
/// one moment (so tests can give their own). Its `Debug` form names the
/// variables, never their values (`PGPASSWORD`).
#[derive(Clone, Default)]
pub(crate) struct Env {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .finish()
    }
}

impl Env {
    /// The process's environment.
    pub(crate) fn process() -> Env {
        Env {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("PG"))
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)], home: Option<&Path>) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: home.map(Path::to_path_buf),
        }
    }

    fn var(&self, key: &str) -> Option<String> {
        self.vars.get(key).filter(|v| !v.is_empty()).cloned()
    }

    fn tls_default(&self, key: &str) -> Option<String> {
        self.var(match key {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            _ => return None,
        })
    }

    /// Fills what the string left out, as libpq does.
    /// `given` says whether the string itself gave a key, which wins over
    /// the environment where `config` cannot tell a default from a choice.
    fn complete(&self, config: &mut Config, given: impl Fn(&str) -> bool) -> Result<(), Invalid> {
        use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};
        // A setting that cannot be read is refused, as libpq refuses it: a
        // default in its place could reach another server than psql does,
        // or log in with less care. The errors name the variable, never its
        // value.
        let bad = |var: &str, what: &str| Invalid(format!("{var} is not {what}"));
        if self.var("PGSERVICE").is_some() {
            return Err(Invalid(
                "PGSERVICE is set: connection service files are not supported; give the \
                 settings themselves"
                    .into(),
            ));
        }
        // Settings libpq would honour and this crate cannot: ignoring them
        // would check less than psql does.
        for (var, what) in [
            ("PGSSLCRL", "certificate revocation lists"),
            ("PGSSLCRLDIR", "certificate revocation lists"),
            ("PGREQUIREAUTH", "a required authentication method"),
        ] {
            if self.var(var).is_some() {
                return Err(Invalid(format!("{var} is set: {what} are not supported")));
            }
        }
        if self.var("PGGSSENCMODE").as_deref() == Some("require") {
            return Err(Invalid(
                "PGGSSENCMODE is require: GSSAPI encryption is not supported".into(),
            ));
        }
        if config.get_hostaddrs().is_empty() {
            if let Some(addrs) = self.var("PGHOSTADDR") {
                for a in addrs.split(',') {
                    let ip = a
                        .trim()
                        .parse()
                        .map_err(|_| bad("PGHOSTADDR", "an IP address or a list of them"))?;
                    config.hostaddr(ip);
                }
            }
        }
        if config.get_hosts().is_empty() {
            match self.var("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        config.host(h);
                    }
                }
                // libpq: addresses without names are enough.
                None if !config.get_hostaddrs().is_empty() => {}
                None => {
                    // libpq's default: the local socket directory.
                    let socket = Path::new("/var/run/postgresql");
                    if socket.is_dir() {
                        config.host_path(socket);
                    } else {
                        config.host("localhost");
                    }
                }
            }
        }
        if config.get_ports().is_empty() {
            if let Some(ports) = self.var("PGPORT") {
                for p in ports.split(',') {
                    // As libpq: an empty item is the default port.
                    let p = p.trim();
                    let port = if p.is_empty() {
                        5432
                    } else {
                        p.parse()
                            .map_err(|_| bad("PGPORT", "a port number or a list of them"))?
                    };
                    config.port(port);
                }
            }
        }
        if let Some(binding) = self
            .var("PGCHANNELBINDING")
            .filter(|_| !given("channel_binding"))
        {
            config.channel_binding(match binding.as_str() {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => return Err(bad("PGCHANNELBINDING", "one of disable, prefer, require")),
            });
        }
        if let Some(attrs) = self
            .var("PGTARGETSESSIONATTRS")
            .filter(|_| !given("target_session_attrs"))
        {
            config.target_session_attrs(match attrs.as_str() {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                "read-only" => TargetSessionAttrs::ReadOnly,
                _ => {
                    return Err(bad(
                        "PGTARGETSESSIONATTRS",
                        "one of any, read-write, read-only (the others are not supported)",
                    ))
                }
            });
        }
        if config.get_options().is_none() {
            if let Some(options) = self.var("PGOPTIONS") {
                config.options(options);
            }
        }
        if config.get_user().is_none() {
            let user = self.var("PGUSER").or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
            if let Some(user) = user {
                config.user(user);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(db) = self.var("PGDATABASE") {
                config.dbname(db);
            }
        }
        if config.get_application_name().is_none() {
            if let Some(app) = self.var("PGAPPNAME") {
                config.application_name(app);
            }
        }
        if config.get_connect_timeout().is_none() {
            if let Some(secs) = self.var("PGCONNECT_TIMEOUT") {
                let secs: i64 = secs
                    .trim()
                    .parse()
                    .map_err(|_| bad("PGCONNECT_TIMEOUT", "a number of seconds"))?;
                // As libpq: 0 or less is no bound.
                if secs > 0 {
                    config.connect_timeout(std::time::Duration::from_secs(secs as u64));
                }
            }
        }
        if config.get_password().is_none() {
            let password = self
                .var("PGPASSWORD")
                .or_else(|| self.password_from_file(config));
            if let Some(p) = password {
                config.password(p);
            }
        }
        Ok(())
    }

    /// The password file's entry for this connection: `$PGPASSFILE`, or
    /// `~/.pgpass`; ignored, as by libpq, when others may read it.
    fn password_from_file(&self, config: &Config) -> Option<String> {
        let path = self
            .var("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| self.home.as_ref().map(|h| h.join(".pgpass")))?;
        let meta = std::fs::metadata(&path).ok()?;
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "lockmgr: the password file may be read by others; ignored, as libpq does"
                );
                return None;
            }
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            // libpq matches a socket connection as "localhost".
            Some(Host::Unix(_)) | None => "localhost".into(),
        };
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let user = config.get_user().unwrap_or_default().to_string();
        let db = config.get_dbname().unwrap_or(&user).to_string();
        password_entry(&text, &[&host, &port, &db, &user])
    }
}

/// The password of the first line of a password file whose first four
/// fields match `want` (`*` matches anything; `\` escapes `:` and `\`).
fn password_entry(text: &str, want: &[&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        field.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Connection {
        Connection::parse(s, &Env::default()).unwrap()
    }

    #[test]
    fn libpq_tls_settings_are_taken_from_urls_and_pairs() {
        let c = parse("postgres://app:pw@db.internal:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x");
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.roots, Some(Roots::File("/etc/ca.pem".into())));
        assert_eq!(c.config.get_application_name(), Some("x"));
        assert_eq!(c.server(), "db.internal:6543");
        assert_eq!(c.database(), "app");
        assert_eq!(c.config.get_password(), Some(&b"pw"[..]));

        let c = parse(
            r"host=db user=app password='it\'s \'quoted\'' sslmode=verify-ca sslrootcert=system dbname=app",
        );
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        assert_eq!(c.tls.roots, Some(Roots::System));
        assert_eq!(c.config.get_password(), Some(&b"it's 'quoted'"[..]));

        // libpq: require with a root certificate checks the chain.
        let c = parse("host=db sslmode=require sslrootcert=/ca.pem");
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        assert_eq!(parse("host=db").tls.mode, SslMode::Prefer);
    }

    /// libpq: `require` checks the chain as `verify-ca` does whenever a
    /// root certificate file exists, the default `~/.postgresql/root.crt`
    /// included (before: only one named by `sslrootcert`).
    #[test]
    fn require_checks_the_chain_against_the_default_root_certificate() {
        let home = tempfile::tempdir().unwrap();
        let env = Env::from_pairs(&[], Some(home.path()));
        let tls = |s: &str| Connection::parse(s, &env).unwrap().tls;
        assert_eq!(tls("host=db sslmode=require").mode, SslMode::Require);
        let root = home.path().join(".postgresql/root.crt");
        std::fs::create_dir(root.parent().unwrap()).unwrap();
        std::fs::write(&root, "PEM").unwrap();
        let t = tls("host=db sslmode=require");
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(t.roots, Some(Roots::File(root)));
        // Other modes are left as they are.
        assert_eq!(tls("host=db sslmode=prefer").mode, SslMode::Prefer);
    }

    #[test]
    fn bad_settings_are_refused_without_their_values() {
        for (s, says) in [
            ("host=db sslmode=bogus", "sslmode"),
            ("host=db sslcert=/c.pem", "sslkey"),
            ("host=db sslpassword=hunter2", "sslpassword"),
            ("host=db password='unclosed", "closing quote"),
            ("host=db user=app hunter2", "word 3"),
            ("postgres://u:hunter2@db:notaport/app", "parse"),
        ] {
            let e = Connection::parse(s, &Env::default()).err().expect(s);
            assert!(e.0.contains(says), "{s}: {}", e.0);
            assert!(
                !e.0.contains("hunter2") && !e.0.contains("bogus"),
                "{}",
                e.0
            );
        }
    }

    #[test]
    fn missing_settings_come_from_the_environment_and_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join(".pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:5432:*:app:nope\ndb\\:x:*:*:app:from-file\ndb:5433:*:app:right\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = Env::from_pairs(
            &[
                ("PGHOST", "db"),
                ("PGPORT", "5433"),
                ("PGUSER", "app"),
                ("PGSSLMODE", "require"),
            ],
            Some(dir.path()),
        );
        let c = Connection::parse("dbname=jobs", &env).unwrap();
        assert_eq!(c.server(), "db:5433");
        assert_eq!(c.config.get_user(), Some("app"));
        assert_eq!(c.config.get_password(), Some(&b"right"[..]));
        assert_eq!(c.tls.mode, SslMode::Require);
        // What the string says wins.
        let c =
            Connection::parse("host=other port=5432 password=given sslmode=disable", &env).unwrap();
        assert_eq!(c.config.get_password(), Some(&b"given"[..]));
        assert_eq!(c.tls.mode, SslMode::Disable);
        // A password file others may read is ignored.
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Connection::parse("dbname=jobs", &env).unwrap();
        assert_eq!(c.config.get_password(), None);
    }

    /// The environment is read as libpq reads it, or refused: a setting
    /// that cannot be read is an error, not a default in its place (before:
    /// `PGPORT=6432,6433` became 5432, `PGSERVICE` was ignored, and so were
    /// `PGCHANNELBINDING=require` and `PGTARGETSESSIONATTRS`: another server
    /// than psql's, or a weaker login).
    #[test]
    fn the_environment_is_read_whole_or_refused() {
        let parse = |pairs: &[(&str, &str)]| Connection::parse("", &Env::from_pairs(pairs, None));
        let c = parse(&[("PGHOST", "a,b"), ("PGPORT", "6432,6433")]).unwrap();
        assert_eq!(c.config.get_ports(), &[6432, 6433]);
        // As libpq: an empty item is the default port; a timeout of 0 or
        // less is none.
        let c = parse(&[("PGHOST", "a,b"), ("PGPORT", ",6433")]).unwrap();
        assert_eq!(c.config.get_ports(), &[5432, 6433]);
        let c = parse(&[("PGHOST", "a"), ("PGCONNECT_TIMEOUT", "-1")]).unwrap();
        assert_eq!(c.config.get_connect_timeout(), None);
        // As libpq: addresses without names (before: the default socket
        // was added as a name, and the counts disagreed).
        let c = parse(&[("PGHOSTADDR", "127.0.0.1,127.0.0.2")]).unwrap();
        assert_eq!(c.config.get_hosts().len(), 0);
        assert_eq!(c.config.get_hostaddrs().len(), 2);
        assert_eq!(c.server(), "127.0.0.1:5432");
        let c = parse(&[("PGHOST", "a"), ("PGCHANNELBINDING", "require")]).unwrap();
        assert_eq!(
            c.config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
        let c = parse(&[("PGHOST", "a"), ("PGTARGETSESSIONATTRS", "read-write")]).unwrap();
        assert_eq!(
            c.config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        // What the string says wins.
        let c = Connection::parse(
            "host=a channel_binding=disable",
            &Env::from_pairs(&[("PGCHANNELBINDING", "require")], None),
        )
        .unwrap();
        assert_eq!(
            c.config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Disable
        );
        let c = parse(&[("PGHOST", "a"), ("PGOPTIONS", "-c search_path=x")]).unwrap();
        assert_eq!(c.config.get_options(), Some("-c search_path=x"));
        for (pairs, says) in [
            (&[("PGPORT", "54x32")][..], "PGPORT"),
            (&[("PGHOSTADDR", "not-an-address")][..], "PGHOSTADDR"),
            (&[("PGCONNECT_TIMEOUT", "soon")][..], "PGCONNECT_TIMEOUT"),
            (&[("PGCHANNELBINDING", "always")][..], "PGCHANNELBINDING"),
            (
                &[("PGTARGETSESSIONATTRS", "standby")][..],
                "PGTARGETSESSIONATTRS",
            ),
            (&[("PGSERVICE", "locks")][..], "PGSERVICE"),
            (&[("PGSSLCRL", "/etc/crl.pem")][..], "PGSSLCRL"),
            (&[("PGREQUIREAUTH", "scram-sha-256")][..], "PGREQUIREAUTH"),
            (&[("PGGSSENCMODE", "require")][..], "PGGSSENCMODE"),
        ] {
            let e = parse(pairs)
                .err()
                .unwrap_or_else(|| panic!("{pairs:?} was taken"));
            assert!(e.0.contains(says), "{pairs:?}: {}", e.0);
        }
    }

    #[test]
    fn password_file_escapes_and_wildcards() {
        let text = "h\\:1:*:d:u:p\\:w\\\\\n*:*:*:*:any\n";
        assert_eq!(
            password_entry(text, &["h:1", "5432", "d", "u"]).as_deref(),
            Some("p:w\\")
        );
        assert_eq!(
            password_entry(text, &["x", "1", "y", "z"]).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn the_environment_shows_no_password() {
        let env = Env::from_pairs(&[("PGPASSWORD", "s3cr3t"), ("PGHOST", "db")], None);
        let shown = format!("{env:?}");
        assert!(
            shown.contains("PGPASSWORD") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn passwords_are_found_in_urls_and_key_value_strings() {
        for s in [
            "postgres://app:secret@db/app",
            "postgresql://app:s%40cret@db:5432,db2/app?sslmode=require",
            " postgres://app:secret@db ",
            "postgres://app@db/app?sslmode=require&password=secret",
            "postgres://app@db/app?pass%77ord=secret",
            "host=db password=secret",
            "host=db password = secret user=app",
            "host=db password='it\\'s secret' user=app",
            "password='a b'",
            // Does not parse: suspected.
            "host=db password='unclosed",
            // A bare `@` or `?` in the password: does not parse either.
            "postgres://app:pa@ss@db/app",
            "postgres://app:pa?ss@db/app",
            "postgresql://app:p@s?s@db:5432/app?sslmode=require",
            // A `?` then a `name=`: parses, with the password's end taken
            // for a parameter.
            "postgres://app:pa?ss=x@db/app",
        ] {
            assert!(carries_password(s), "{s}");
        }
        for s in [
            "",
            "postgres://app@db/app",
            "postgres://db:5432/app?application_name=me@home",
            "postgres://app:@db/app",
            "postgres://app@db/app?password=",
            "host=db user=app",
            "host=db password='' user=app",
            "host=db application_name='password=secret'",
            "host=db passwordx=secret",
        ] {
            assert!(!carries_password(s), "{s}");
        }
    }
}
