//! The fencing-token table, `lockmgr_fence`: created on first use, one row
//! per lock name, its token raised by every holding.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::sql;

/// Creates the table if it is missing. Two sessions creating it at once is
/// success for both.
pub(super) async fn ensure_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(sql::FENCE_TABLE).await {
        Ok(()) => Ok(()),
        // The loser of a create race sees the winner's type or table.
        Err(e)
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || e.code() == Some(&SqlState::DUPLICATE_TABLE) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Draws the next token for `name` in the session that just won its lock,
/// and records that session as the holder.
pub(super) async fn next_token(client: &Client, name: &str) -> Result<u64, tokio_postgres::Error> {
    let token: i64 = client.query_one(sql::NEXT_TOKEN, &[&name]).await?.get(0);
    Ok(token as u64)
}
