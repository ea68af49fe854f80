//! `gateway demo-worker`: plays the backend service for a demo node. It finds queued tasks through
//! the public API (a service token), then posts `running`, progress in steps and `succeeded` to
//! `POST /api/v1/tasks/{id}/events`, as a real worker would, so a person trying the console sees
//! tasks run live. Only for `scripts/run`; a real deployment has its own workers.

use anyhow::Context;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Polls `api` every `poll` for queued tasks and runs each once; stops on Ctrl-C or SIGTERM.
pub async fn run(api: String, token: String, step: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let shutdown = crate::shutdown::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let queued = match queued(&http, &api, &token).await {
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, "listing queued tasks");
                continue;
            }
        };
        for (id, units) in queued {
            if !running
                .lock()
                .map(|mut set| set.insert(id.clone()))
                .unwrap_or(false)
            {
                continue;
            }
            let (http, api, token, running) =
                (http.clone(), api.clone(), token.clone(), running.clone());
            tokio::spawn(async move {
                if let Err(error) = work(&http, &api, &token, &id, units, step).await {
                    tracing::warn!(task = %id, %error, "demo worker gave up on a task");
                }
                if let Ok(mut set) = running.lock() {
                    set.remove(&id);
                }
            });
        }
    }
}

async fn queued(
    http: &reqwest::Client,
    api: &str,
    token: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let page: Value = http
        .get(format!("{api}/api/v1/tasks?status=queued&limit=50"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|task| Some((task["id"].as_str()?.to_owned(), task["units"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default())
}

async fn work(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    id: &str,
    units: i64,
    step: Duration,
) -> anyhow::Result<()> {
    let post = |body: Value| async move {
        let response = http
            .post(format!("{api}/api/v1/tasks/{id}/events"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        // 409: the task moved on without us (canceled by its owner): stop quietly.
        if response.status() == reqwest::StatusCode::CONFLICT {
            anyhow::bail!("the task is no longer runnable");
        }
        response.error_for_status()?;
        anyhow::Ok(())
    };
    post(json!({ "kind": "state", "state": "running", "message": "demo worker picked it up" }))
        .await?;
    for progress in [15, 35, 55, 75, 95] {
        tokio::time::sleep(step).await;
        post(json!({ "kind": "progress", "progress": progress, "message": format!("{progress}% rendered") })).await?;
    }
    tokio::time::sleep(step).await;
    post(json!({ "kind": "state", "state": "succeeded", "actual_units": units })).await
}
