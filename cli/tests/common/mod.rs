//! What the command's PostgreSQL tests share.

/// The URL of the PostgreSQL server for these tests (`LOCKMGR_PG_URL`,
/// exported by `scripts/with-postgres`). `None`, with a note on stderr, when
/// it is not set outside CI; under CI (`CI` set) a missing URL fails the
/// test.
pub fn pg_url() -> Option<String> {
    match std::env::var("LOCKMGR_PG_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run these tests through scripts/with-postgres"
            );
            eprintln!("LOCKMGR_PG_URL is not set: not run (use scripts/test)");
            None
        }
    }
}
