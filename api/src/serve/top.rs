//! `GET /containers/{id}/top?ps_args=` (`docker top`): the container's own
//! `ps` (`container::top`).

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::containers::{load, open};
use super::{blocking, json, ApiError, Ctx, Query, Reply};
use crate::container::top::{top as run_top, TopError};

impl From<TopError> for ApiError {
    fn from(e: TopError) -> Self {
        match e {
            TopError::Run(crate::container::tool::ToolError::Ipc(i)) => i.into(),
            TopError::NoPs => ApiError::BadParameter(e.to_string()),
            e => ApiError::internal(&e),
        }
    }
}

/// `GET /containers/{id}/top`: `{"Titles": [...], "Processes": [[...]]}`.
pub async fn top(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let ps_args = q.get("ps_args").unwrap_or("").to_string();
    let t = blocking(move || {
        let (h, _, _, running) = load(&open(&ctx)?, &key)?;
        if !running {
            return Err(ApiError::Conflict(format!(
                "Container {key} is not running"
            )));
        }
        Ok(run_top(&h, &ps_args)?)
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"Titles": t.titles, "Processes": t.processes}),
    ))
}
