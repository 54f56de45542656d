//! Redis write-behind (see issue 5). Placeholder wiring until it lands.

use crate::app::App;
use std::sync::Arc;

/// Starts the write-behind to `url`.
pub async fn start(_app: Arc<App>, url: String) -> Result<(), String> {
    Err(format!("--redis {url}: write-behind is not built yet"))
}

/// Flushes and stops the write-behind, if any.
pub async fn stop(_app: &App) {}
